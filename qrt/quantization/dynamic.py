"""``quantize_dynamic``: int8 weights, activations quantized at run time.

The output uses standard ONNX ops only, so any runtime can run it:

* MatMul / Gemm with a constant B: ``DynamicQuantizeLinear(A) -> MatMulInteger(A_q, B_q, A_zp, B_zp)
  -> Cast -> Mul(A_scale * B_scale [* alpha])`` (+ ``Add`` of the bias). onnxruntime fuses this
  chain into its DynamicQuantizeMatMul / MatMulIntegerToFloat kernels.
* Conv (group 1): ``DynamicQuantizeLinear -> ConvInteger -> Cast -> Mul`` (+ bias). ConvInteger
  takes one weight zero point, so per-channel Conv weights must be symmetric (zero point 0); with
  asymmetric weights the Conv is quantized per tensor.
* LSTM with constant W and R: com.microsoft ``DynamicQuantizeLSTM`` (onnxruntime's own contrib op,
  which qrt runs too), as onnxruntime's quantizer writes it: W and R symmetric int8 (zero point 0),
  one scale per direction or, with ``per_channel``, per gate column, stored transposed to
  (num_directions, input, 4 * hidden); B, P and the states stay float.
* Gather from a constant table (embeddings): the table is stored uint8 (asymmetric, like the
  activations) and the gathered rows pass through ``DequantizeLinear``; a quantized MatMul reading
  them takes the uint8 rows directly.

DynamicQuantizeLinear produces uint8 activations; weights are ``weight_type`` (QInt8 by default,
as in onnxruntime).

Outlier-safe form (``per_row=True`` / ``extra_options={"PerRowActivations": True}``): MatMul and Gemm
take one uint8 scale and zero point per row of A (per token of a [batch, seq, hidden] activation),
computed as DynamicQuantizeLinear computes them for the whole tensor, and per-channel weights (one
scale, and zero point for QUInt8, per output column). Per-row scales help where outliers sit in a
few tokens (every other token keeps its own fine range); outliers in fixed channels are
SmoothQuant's job (:mod:`.smoothquant`), and per-channel weight scales absorb the weight rows it
enlarges, so the two combine. QuantizeLinear
cannot take a per-row scale of a rank-3 tensor (per-axis scales are 1-D along one axis) and
onnxruntime's MatMulInteger refuses a per-row ``a_zero_point`` (it must be a scalar), so the
pattern is written in elementary standard ops; per activation ``X`` (shared by every MatMul reading it)::

    x_min  = ReduceMin(X, axes=[-1], keepdims=1)       x_max = ReduceMax(X, axes=[-1], keepdims=1)
    lo     = Min(x_min, 0)                             hi    = Max(x_max, 0)
    scale  = Max(Div(Sub(hi, lo), 255), FLT_MIN)       # [..., 1] float32
    zp     = Clip(Round(Neg(Div(lo, scale))), 0, 255)  # [..., 1] float32 holding an integer
    X_q    = Cast<uint8>(Clip(Add(Round(Div(X, scale)), zp), 0, 255))
    zp_i32 = Cast<int32>(zp)

and per MatMul with int8/uint8 weight ``W_q`` [K, N], zero point ``w_zp`` (scalar or [N]) and
``colsum[n] = sum_k (W_q[k, n] - w_zp[n])`` (an int32 initializer)::

    acc  = MatMulInteger(X_q, W_q, "", w_zp)           # int32 [..., N], A's zero point left out
    acc  = Sub(acc, Mul(zp_i32, colsum))               # int32: exactly sum_k (X_q - zp)(W_q - w_zp)
    Y    = Mul(Cast<float>(acc), Mul(scale, w_scale))  # w_scale [N]

Everything up to ``acc`` is integer-exact, so qrt and onnxruntime agree bit for bit on it (Div and
Round are correctly rounded IEEE operations in both); the float rescale matches to float32 rounding.
qrt's session runs the whole pattern of one activation as one node (:mod:`qrt.fusion.per_row_matmul`).
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from .config import make_config
from .feeds import with_complete_types
from .graph import MS_DOMAIN, GraphIndex, attribute, describe, toposort
from .model_io import check_output, finish, load, save, serialized_size
from .params import params_for_values, quantize_values
from .preprocess import preprocess
from .rewrite import _Rewriter
from .rules import DEFAULT_DYNAMIC_OP_TYPES
from .smoothquant import smooth_for_quantization
from .static import unchanged
from .summary import NodeReport, QuantizationSummary, is_shape_computation
from .types import QuantFormat, QuantType


class DynamicRewriter(_Rewriter):
    def __init__(self, g, cfg):
        super().__init__(g, cfg, {})
        self._dynamic: dict[str, tuple[str, str, str]] = {}
        self._per_row: dict[str, tuple[str, str, str]] = {}
        self._constants: dict[tuple, str] = {}

    def dynamic_input(self, name: str):
        """(uint8 tensor, scale, zero point) from one DynamicQuantizeLinear per activation."""
        if name not in self._dynamic:
            outs = [self.g.unique(f"{name}_quantized"), self.g.unique(f"{name}_scale"),
                    self.g.unique(f"{name}_zero_point")]
            self.emit("DynamicQuantizeLinear", [name], outs)
            self._dynamic[name] = tuple(outs)
        return self._dynamic[name]

    def rescale(self, int32_name, a_scale, w_scale_values, out_name, shape=None):
        """float(int32 accumulator) * a_scale * w_scale -> out_name."""
        as_float = self.g.unique(f"{out_name}_float_accumulator")
        self.emit("Cast", [int32_name], [as_float], attrs=[helper.make_attribute("to", TensorProto.FLOAT)])
        w_scale = np.asarray(w_scale_values, np.float32)
        if shape is not None:
            w_scale = w_scale.reshape(shape)
        w_scale_name = self.add_initializer(w_scale, f"{out_name}_weight_scale")
        combined = self.g.unique(f"{out_name}_scale")
        self.emit("Mul", [a_scale, w_scale_name], [combined])
        self.emit("Mul", [as_float, combined], [out_name])

    def constant(self, value, base: str) -> str:
        """A scalar constant initializer, shared by every per-row pattern of the graph."""
        key = (np.asarray(value).dtype.str, float(value))
        if key not in self._constants:
            self._constants[key] = self.add_initializer(np.asarray(value), base)
        return self._constants[key]

    def reduce(self, op_type, name, out):
        """ReduceMin/ReduceMax over the last axis, keepdims (axes moved from attribute to input in opset 18)."""
        if self.g.opset >= 18:
            if ("last_axis",) not in self._constants:
                self._constants[("last_axis",)] = self.add_initializer(np.array([-1], np.int64), "per_row_last_axis")
            axes = self._constants[("last_axis",)]
            return self.emit(op_type, [name, axes], [out], attrs=[helper.make_attribute("keepdims", 1)])
        return self.emit(op_type, [name], [out], attrs=[helper.make_attribute("axes", [-1]),
                                                        helper.make_attribute("keepdims", 1)])

    def per_row_input(self, name: str):
        """(uint8 tensor, per-row scale, per-row int32 zero point): DynamicQuantizeLinear's arithmetic per row.

        Each intermediate is [..., 1] except the quantized tensor; see the module docstring."""
        if name not in self._per_row:
            u = self.g.unique
            zero = self.constant(np.float32(0.0), "per_row_zero")
            qmax = self.constant(np.float32(255.0), "per_row_qmax")
            tiny = self.constant(np.finfo(np.float32).tiny, "per_row_smallest_scale")
            x_min, x_max, lo, hi = (u(f"{name}_row_{part}") for part in ("min", "max", "low", "high"))
            self.reduce("ReduceMin", name, x_min)
            self.reduce("ReduceMax", name, x_max)
            self.emit("Min", [x_min, zero], [lo])
            self.emit("Max", [x_max, zero], [hi])
            span, raw_scale, scale = u(f"{name}_row_span"), u(f"{name}_row_scale_raw"), u(f"{name}_row_scale")
            self.emit("Sub", [hi, lo], [span])
            self.emit("Div", [span, qmax], [raw_scale])
            self.emit("Max", [raw_scale, tiny], [scale])
            low_scaled, negated, rounded_zp, zp = (u(f"{name}_row_zero_point_{part}")
                                                   for part in ("scaled", "negated", "rounded", "float"))
            self.emit("Div", [lo, scale], [low_scaled])
            self.emit("Neg", [low_scaled], [negated])
            self.emit("Round", [negated], [rounded_zp])
            self.emit("Clip", [rounded_zp, zero, qmax], [zp])
            scaled, rounded, shifted, clipped = (u(f"{name}_row_{part}") for part in
                                                 ("scaled", "rounded", "shifted", "clipped"))
            self.emit("Div", [name, scale], [scaled])
            self.emit("Round", [scaled], [rounded])
            self.emit("Add", [rounded, zp], [shifted])
            self.emit("Clip", [shifted, zero, qmax], [clipped])
            quantized, zp_int = u(f"{name}_row_quantized"), u(f"{name}_row_zero_point")
            self.emit("Cast", [clipped], [quantized], attrs=[helper.make_attribute("to", TensorProto.UINT8)])
            self.emit("Cast", [zp], [zp_int], attrs=[helper.make_attribute("to", TensorProto.INT32)])
            self._per_row[name] = (quantized, scale, zp_int)
        return self._per_row[name]

    def per_row_matmul(self, node, b_index, transposed, alpha, out_name):
        """MatMulInteger on per-row uint8 activations and per-channel weights, zero points corrected in int32."""
        a_q, a_scale, a_zero_point = self.per_row_input(node.input[0])
        b_q, _, b_zero_point, params = self.weight(node.input[b_index], 1, transposed=transposed)
        values = np.asarray(self.g.constant(node.input[b_index]), np.float32)
        q = quantize_values(np.ascontiguousarray(values.T) if transposed else values, params).astype(np.int32)
        column_sums = (q - params.zero_point.reshape(1, -1).astype(np.int32)).sum(axis=0).astype(np.int32)
        sums_name = self.add_initializer(column_sums, f"{node.input[b_index]}_column_sums")
        raw, correction, accumulator = (self.g.unique(f"{out_name}_{part}") for part in
                                        ("int32_raw", "zero_point_correction", "int32"))
        self.emit("MatMulInteger", [a_q, b_q, "", b_zero_point], [raw], name=node.name or None)
        self.emit("Mul", [a_zero_point, sums_name], [correction])
        self.emit("Sub", [raw, correction], [accumulator])
        self.rescale(accumulator, a_scale, params.scale * np.float32(alpha), out_name)

    def per_row_applies(self, activation: str) -> bool:
        """Per-row scales are on, and the activation is not rows gathered from a uint8 embedding table
        (those are quantized already, with the table's one scale)."""
        return self.cfg.per_row_activations and activation not in self._dynamic

    def matmul(self, node, b_index, transposed, alpha, out_name):
        if self.per_row_applies(node.input[0]):
            return self.per_row_matmul(node, b_index, transposed, alpha, out_name)
        a_q, a_scale, a_zero_point = self.dynamic_input(node.input[0])
        axis = 1 if self.cfg.per_channel else None
        b_q, _, b_zero_point, params = self.weight(node.input[b_index], axis, transposed=transposed)
        accumulator = self.g.unique(f"{out_name}_int32")
        self.emit("MatMulInteger", [a_q, b_q, a_zero_point, b_zero_point], [accumulator], name=node.name or None)
        self.rescale(accumulator, a_scale, params.scale * np.float32(alpha), out_name)

    def gemm(self, node):
        alpha = attribute(node, "alpha", 1.0)
        beta = attribute(node, "beta", 1.0)
        out = node.output[0]
        has_c = len(node.input) > 2 and node.input[2]
        product = self.g.unique(f"{out}_product") if has_c else out
        self.matmul(node, 1, bool(attribute(node, "transB", 0)), alpha, product)
        if has_c:
            c = node.input[2]
            if self.g.is_constant(c):
                c = self.add_initializer(np.asarray(self.g.constant(c), np.float32) * np.float32(beta), f"{c}_scaled")
            elif beta != 1.0:
                beta_name = self.add_initializer(np.float32(beta), f"{out}_beta")
                scaled = self.g.unique(f"{c}_scaled")
                self.emit("Mul", [c, beta_name], [scaled])
                c = scaled
            self.emit("Add", [product, c], [out])

    def conv(self, node, per_channel):
        x_q, x_scale, x_zero_point = self.dynamic_input(node.input[0])
        w_name = node.input[1]
        w_q, _, w_zero_point, params = self.weight(w_name, 0 if per_channel else None)
        if params.per_axis:
            # ConvInteger accepts one weight zero point; symmetric weights have all of them 0.
            w_zero_point = self.add_initializer(params.zero_point.reshape(-1)[:1].reshape(()), f"{w_name}_zero_point_scalar")
        out = node.output[0]
        has_bias = len(node.input) > 2 and node.input[2]
        scaled = self.g.unique(f"{out}_unbiased") if has_bias else out
        accumulator = self.g.unique(f"{out}_int32")
        conv = self.emit("ConvInteger", [x_q, w_q, x_zero_point, w_zero_point], [accumulator], name=node.name or None)
        conv.attribute.extend(node.attribute)
        rank = len(self.g.shapes[w_name])
        channel_shape = [1, -1] + [1] * (rank - 2)
        self.rescale(accumulator, x_scale, params.scale, scaled, shape=channel_shape if params.per_axis else None)
        if has_bias:
            bias = np.asarray(self.g.constant(node.input[2]), np.float32).reshape(channel_shape)
            bias_name = self.add_initializer(bias, f"{node.input[2]}_reshaped")
            self.emit("Add", [scaled, bias_name], [out])

    def lstm(self, node):
        """LSTM -> com.microsoft DynamicQuantizeLSTM (int8 W and R transposed, float everything else)."""
        inputs = list(node.input) + [""] * (8 - len(node.input))
        quantized = []
        for name in inputs[1:3]:
            values = np.asarray(self.g.constant(name), np.float32)
            dirs, rows, cols = values.shape
            # Scales per direction, or per gate column: the slices along axis 0 of (dirs * 4 * hidden, cols).
            grouped = values.reshape(dirs * rows, cols) if self.cfg.per_channel else values
            params = params_for_values(grouped, QuantType.QInt8, symmetric=True, reduce_range=self.cfg.reduce_range,
                                       axis=0)
            q = quantize_values(grouped, params).reshape(dirs, rows, cols).transpose(0, 2, 1)
            shape = (dirs, rows) if self.cfg.per_channel else (dirs,)
            quantized += [self.add_initializer(np.ascontiguousarray(q), f"{name}_quantized"),
                          self.add_initializer(params.scale.reshape(shape), f"{name}_scale"),
                          self.add_initializer(params.zero_point.reshape(shape), f"{name}_zero_point")]
        w_q, w_scale, w_zero_point, r_q, r_scale, r_zero_point = quantized
        attrs = [a for a in node.attribute if a.name != "layout"]
        if attribute(node, "hidden_size", None) is None:
            attrs.append(helper.make_attribute("hidden_size", int(self.g.shapes[node.input[2]][2])))
        new = self.emit("DynamicQuantizeLSTM", [inputs[0], w_q, r_q] + inputs[3:8]
                        + [w_scale, w_zero_point, r_scale, r_zero_point], list(node.output), name=node.name or None,
                        domain=MS_DOMAIN)
        new.attribute.extend(attrs)

    def gather(self, node):
        table = node.input[0]
        q_table, scale, zero_point, _ = self.weight(table, None, table=True)
        gathered = self.g.unique(f"{node.output[0]}_quantized")
        new = self.emit("Gather", [q_table, node.input[1]], [gathered], name=node.name or None)
        new.attribute.extend(node.attribute)
        self.emit("DequantizeLinear", [gathered, scale, zero_point], [node.output[0]])
        # Rows gathered from a uint8 table are already what DynamicQuantizeLinear would produce:
        # a MatMul reading them takes them directly instead of quantizing them a second time.
        self._dynamic[node.output[0]] = (gathered, scale, zero_point)


def _reason(g: GraphIndex, node, cfg) -> str:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return f"op of domain {node.domain!r}"
    if op not in DEFAULT_DYNAMIC_OP_TYPES:
        return f"qrt has no dynamically quantized form of {op}"
    if node.name in cfg.nodes_to_exclude:
        return "listed in nodes_to_exclude"
    if cfg.nodes_to_quantize is not None and node.name not in cfg.nodes_to_quantize:
        return "not listed in nodes_to_quantize"
    if op not in cfg.op_types:
        return "op type not in op_types_to_quantize"
    if op == "Gather":
        table = node.input[0]
        if not g.is_constant(table):
            return f"data {table!r} is not a constant"
        return "" if g.is_float(table) else f"data {table!r} is not float32"
    a, w = node.input[0], node.input[1]
    if not g.is_float(a):
        return f"input {a!r} is not float32 (or its type is unknown)"
    if not g.is_constant(w) or not g.is_float(w):
        return f"weight {w!r} is not a float32 constant"
    if op == "LSTM":
        r = node.input[2]
        if not g.is_constant(r) or not g.is_float(r):
            return f"recurrence weight {r!r} is not a float32 constant"
        if len(g.shapes[w]) != 3 or len(g.shapes[r]) != 3:
            return "W and R must be 3-D"
        if attribute(node, "layout", 0) != 0:
            return "layout=1 (DynamicQuantizeLSTM is time-major only)"
        return ""
    if op in ("MatMul", "Gemm") and len(g.shapes[w]) != 2:
        return f"weight {w!r} has rank {len(g.shapes[w])}, MatMulInteger needs a 2-D B"
    if op == "Gemm" and attribute(node, "transA", 0):
        return "Gemm with transA=1"
    if op == "Conv":
        if attribute(node, "group", 1) != 1:
            return "grouped/depthwise Conv: too little arithmetic for dynamic quantization to pay"
        if len(node.input) > 2 and node.input[2] and not g.is_constant(node.input[2]):
            return f"bias {node.input[2]!r} is not a constant"
    return ""


def quantize_dynamic(model_input, model_output, op_types_to_quantize=None, per_channel=False,
                     reduce_range=False, weight_type=QuantType.QInt8, nodes_to_quantize=None,
                     nodes_to_exclude=None, use_external_data_format=False,
                     extra_options=None, *, calibration_data_reader=None, smooth_quant=None,
                     per_row=None, progress=False) -> QuantizationSummary:
    """Quantizes weights to int8 and lets the model quantize activations as it runs.

    Arguments and defaults are ``onnxruntime.quantization.quantize_dynamic``'s. ``model_output=None``
    writes nothing; the model is in the returned summary's ``model``. qrt additions (keyword only):

    * ``smooth_quant``: True (alpha 0.5) or the migration strength alpha in [0, 1]: SmoothQuant
      (:mod:`.smoothquant`) before quantizing; same as ``extra_options={"SmoothQuant": True,
      "SmoothQuantAlpha": alpha}``. Needs ``calibration_data_reader`` (any reader or iterable of
      feed dicts), which is read only to find each MatMul input's per-channel maxima.
    * ``per_row``: per-row (per-token) activation scales and per-channel weights for MatMul/Gemm
      (``extra_options={"PerRowActivations": True}``); the pattern is in this module's docstring.
    * ``progress``: a progress bar over the calibration data.
    """
    extra_options = dict(extra_options or {})
    if smooth_quant is not None and smooth_quant is not False:
        extra_options["SmoothQuant"] = True
        if not isinstance(smooth_quant, bool):
            extra_options["SmoothQuantAlpha"] = smooth_quant
    elif smooth_quant is False:
        extra_options["SmoothQuant"] = False
    if per_row is not None:
        extra_options["PerRowActivations"] = bool(per_row)
    cfg = make_config(quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8,
                      weight_type=weight_type, per_channel=per_channel, reduce_range=reduce_range,
                      op_types_to_quantize=op_types_to_quantize, nodes_to_quantize=nodes_to_quantize,
                      nodes_to_exclude=nodes_to_exclude, extra_options=extra_options, tensor_ranges=None,
                      default_op_types=DEFAULT_DYNAMIC_OP_TYPES, dynamic=True)
    check_output(model_input, model_output)
    source, label, size_before = load(model_input)
    model, notes = preprocess(source, label)
    model, reader, note = with_complete_types(model, label, calibration_data_reader, cfg.input_shapes)
    notes += [note] if note else []
    model, _, note = smooth_for_quantization(model, label, reader, cfg, progress)
    notes += [note] if note else []
    g = GraphIndex(model)
    writer = DynamicRewriter(g, cfg)
    reports = []
    available = set(g.graph_inputs) | set(g.initializers)
    for node in toposort(list(g.graph.node), available):
        reason = _reason(g, node, cfg)
        name = node.name or node.output[0]
        if reason:
            writer.nodes.append(node)
            reports.append(NodeReport(name, node.op_type, "float", reason,
                                      shape_computation=is_shape_computation(node, g.elem_types)))
            continue
        detail = {"MatMul": "MatMulInteger", "Gemm": "MatMulInteger", "Conv": "ConvInteger",
                  "Gather": "int8 Gather + DequantizeLinear", "LSTM": "DynamicQuantizeLSTM"}[node.op_type]
        if node.op_type in ("MatMul", "Gemm") and writer.per_row_applies(node.input[0]):
            detail = "MatMulInteger, per-row activations, per-channel weights"
        if node.op_type == "MatMul":
            writer.matmul(node, 1, False, 1.0, node.output[0])
        elif node.op_type == "Gemm":
            writer.gemm(node)
        elif node.op_type == "LSTM":
            writer.lstm(node)
        elif node.op_type == "Conv":
            per_channel_conv = cfg.per_channel and cfg.weight_symmetric_for(cfg.weight_type)
            if cfg.per_channel and not per_channel_conv:
                writer.warnings.append(f"{describe(node)}: per-tensor weights (ConvInteger takes one zero "
                                       "point and WeightSymmetric is off)")
            writer.conv(node, per_channel_conv)
        else:
            writer.gather(node)
        reports.append(NodeReport(name, node.op_type, "quantized", detail))
    if not any(r.status == "quantized" for r in reports):
        return unchanged("dynamic", label, source, model_output, size_before, reports, notes,
                         use_external_data_format)
    quantized = finish(model, writer.nodes, writer.initializers, label)
    summary = QuantizationSummary(
        mode="dynamic", model_name=label, output_path=str(model_output) if model_output is not None else None,
        size_before=size_before, size_after=serialized_size(quantized), nodes=reports, preprocessing=notes,
        warnings=writer.warnings, model=quantized)
    if model_output is not None:
        summary.size_after = save(quantized, model_output, use_external_data_format)
    return summary
