"""The two static rewrites: QOperator (QLinear* ops on int8 tensors) and QDQ (Q/DQ pairs around float ops).

Both read a :class:`Decision` per node (made in :mod:`.static`) and the activation parameters
chosen there, and emit a new node list. Naming is the same in both so results are easy to read:
``T_quantized`` is tensor ``T`` in int8, ``T_scale`` / ``T_zero_point`` its parameters, and the
original name ``T`` always denotes the float tensor, so graph outputs and float consumers never
need renaming.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qrt.errors import QuantizationError

from .graph import GraphIndex, attribute, describe, node_reads
from .params import (QParams, fixed_params, params_for_blocks, params_for_range, params_for_values, quantize_bias,
                     half_scaled, quantize_values, scale_tensor, widened_for_bias, zero_point_tensor)
from .rules import OpRule
from .types import QuantFormat


@dataclass
class Decision:
    """What happens to one node of the float model."""

    node: onnx.NodeProto
    rule: OpRule | None
    status: str = "float"          # float | compute | passthrough | fused
    reason: str = ""               # why it stays float
    acts: tuple = ()               # input indices quantized as activations
    weight: int | None = None      # input index of a weight
    axis: int | None = None        # per-channel (or blocked) axis of the weight
    block_size: int = 0            # BlockSize: blocked weight along ``axis``
    bias: int | None = None        # input index of the bias
    output: str | None = None      # compute: the tensor whose quantized form the node produces
    fusion: "Decision | None" = None   # compute: a Relu/Clip candidate reading the output
    fused_into: str = ""           # fused: the producer's name
    detail: str = ""               # what the node became


def _attributes(params: QParams):
    return [helper.make_attribute(k, v) for k, v in params.axis_attributes().items()] or None


class _Rewriter:
    def __init__(self, g: GraphIndex, cfg, act_params: dict[str, QParams]):
        self.g = g
        self.cfg = cfg
        self.act_params = act_params
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.warnings: list[str] = []
        self._param_names: dict[str, tuple[str, str]] = {}
        self._weights: dict[tuple, tuple[str, QParams]] = {}

    # ------------------------------------------------------------------ shared helpers
    def emit(self, op_type, inputs, outputs, name=None, domain="", attrs=None):
        node = helper.make_node(op_type, list(inputs), list(outputs), name=name or self.g.unique(
            f"{outputs[0]}_{op_type}"), domain=domain)
        if attrs:
            node.attribute.extend(attrs)
        self.nodes.append(node)
        return node

    def add_initializer(self, array: np.ndarray, base: str) -> str:
        name = self.g.unique(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def params(self, name: str) -> QParams:
        """An activation's parameters; a constant used as an activation gets parameters from its values."""
        if name not in self.act_params:
            if not self.g.is_constant(name):
                raise QuantizationError(f"internal: tensor {name!r} has no quantization parameters")
            self.act_params[name] = self.as_stored(name, params_for_values(
                self.g.constant(name), self.cfg.activation_type, symmetric=self.cfg.activation_symmetric,
                min_real_range=self.cfg.min_real_range))
        return self.act_params[name]

    def as_stored(self, name: str, params: QParams) -> QParams:
        """float16 tensors keep float16 scales (their DequantizeLinear then writes float16)."""
        return half_scaled(params) if self.g.elem_types.get(name) == onnx.TensorProto.FLOAT16 else params

    def param_inputs(self, name: str, params: QParams | None = None) -> tuple[str, str]:
        """Names of the scale and zero-point initializers of activation ``name``."""
        if name not in self._param_names:
            params = params or self.params(name)
            scale = self.g.unique(f"{name}_scale")
            zero_point = self.g.unique(f"{name}_zero_point")
            self.initializers.append(scale_tensor(params, scale))
            self.initializers.append(zero_point_tensor(params, zero_point))
            self._param_names[name] = (scale, zero_point)
        return self._param_names[name]

    def quantized_constant(self, name: str) -> str:
        """A float constant used as an activation, stored in the activation type."""
        key = ("activation", name)
        if key not in self._weights:
            params = self.params(name)
            q_name = self.add_initializer(quantize_values(self.g.constant(name), params), f"{name}_quantized")
            self._weights[key] = (q_name, params)
        return self._weights[key][0]

    def weight(self, name: str, axis: int | None, transposed=False, table=False,
               bias_guard=None, block_size=0) -> tuple[str, str, str, QParams]:
        """(quantized weight, scale, zero point, params) for a weight initializer; shared by its readers.

        ``transposed`` quantizes the 2-D weight's transpose (a Gemm's B with transB=1 feeding
        MatMulInteger). ``table`` marks a lookup table (Gather data): its values are activations
        for the ops after the Gather, so it gets the activation type's asymmetric range.
        ``bias_guard`` = (input scale, float bias): the weight scale grows where input scale *
        weight scale would push the int32 bias out of range (onnxruntime's QDQ default).
        """
        key = ("weight", name, axis, transposed, table, block_size)
        if key not in self._weights:
            params = self.weight_qparams(name, axis, transposed, table, block_size)
            if bias_guard is not None:
                params = self.as_stored(name, widened_for_bias(params, *bias_guard))
            values = self.g.constant(name)
            if transposed:
                values = np.ascontiguousarray(values.T)
                name = f"{name}_transposed"
            q_name = self.add_initializer(quantize_values(values, params), f"{name}_quantized")
            scale = self.g.unique(f"{name}_scale")
            zero_point = self.g.unique(f"{name}_zero_point")
            self.initializers += [scale_tensor(params, scale), zero_point_tensor(params, zero_point)]
            self._weights[key] = (q_name, scale, zero_point, params)
        return self._weights[key]

    def weight_qparams(self, name: str, axis: int | None, transposed=False, table=False, block_size=0) -> QParams:
        return self.as_stored(name, self._weight_qparams(name, axis, transposed, table, block_size))

    def _weight_qparams(self, name: str, axis: int | None, transposed, table, block_size) -> QParams:
        cfg = self.cfg
        values = self.g.constant(name)
        if transposed:
            values = np.ascontiguousarray(values.T)
        if table:
            return params_for_values(values, cfg.activation_type, min_real_range=cfg.min_real_range)
        override = cfg.overrides.get(name)
        qtype = override.quant_type if override and override.quant_type else cfg.weight_type
        if override and override.scale is not None:
            size = values.shape[axis] if axis is not None else None
            return fixed_params(override.scale, override.zero_point, qtype, axis, size)
        # QDQ per-channel weights default to symmetric, as onnxruntime writes them; unlike onnxruntime,
        # an explicit WeightSymmetric=False is honoured for them too.
        per_channel_qdq = axis is not None and cfg.quant_format == QuantFormat.QDQ \
            and (cfg.per_channel or not block_size)
        if override and override.symmetric is not None:
            symmetric = override.symmetric
        elif cfg.weight_symmetric is not None:
            symmetric = cfg.weight_symmetric
        else:
            symmetric = per_channel_qdq or cfg.weight_symmetric_for(qtype)
        if block_size:
            return params_for_blocks(values, qtype, axis, block_size, symmetric)
        reduce_range = cfg.reduce_range or bool(override and override.reduce_range)
        if override and (override.rmin is not None or override.rmax is not None):
            other = tuple(i for i in range(values.ndim) if i != axis) if axis is not None else None
            rmin = values.min(axis=other) if override.rmin is None else override.rmin
            rmax = values.max(axis=other) if override.rmax is None else override.rmax
            return params_for_range(np.broadcast_to(rmin, np.shape(rmax)) if axis is not None else rmin, rmax,
                                    qtype, symmetric, reduce_range, axis=axis, min_real_range=cfg.min_real_range)
        return params_for_values(values, qtype, symmetric=symmetric, reduce_range=reduce_range, axis=axis,
                                 min_real_range=cfg.min_real_range)

    def weight_params(self, d: Decision) -> QParams:
        """Parameters of a node's B/W input: a weight's, or an activation's when B is computed."""
        name = d.node.input[d.weight] if d.weight is not None else d.node.input[1]
        if d.weight is not None:
            return self.weight(name, d.axis)[3]
        return self.params(name)

    def bias_float(self, d: Decision) -> np.ndarray:
        return np.asarray(self.g.constant(d.node.input[d.bias]), np.float64)

    def bias_values(self, d: Decision, input_params: QParams, weight_params: QParams):
        """(int32 bias, its scale, its axis) for a node's bias: scale = input scale * weight scale."""
        node = d.node
        bias = np.asarray(self.g.constant(node.input[d.bias]), np.float64)
        scale = np.float32(input_params.scale) * weight_params.scale.astype(np.float32)
        if weight_params.scale.dtype == np.float16:
            # A float16 model's bias: its DequantizeLinear must write float16, so the scale is float16.
            scale = scale.astype(np.float16)
        if node.op_type == "Gemm":
            # QGemm computes alpha * a_scale * b_scale * (A.B + C), so C carries beta / alpha.
            alpha = np.float32(attribute(node, "alpha", 1.0))
            beta = attribute(node, "beta", 1.0)
            scale = (scale * alpha).astype(scale.dtype)
            bias = bias * beta
            if scale.ndim == 1 and (bias.ndim == 0 or bias.shape[-1] != scale.size):
                bias = np.broadcast_to(bias, (bias.shape[:-1] if bias.ndim else ()) + (scale.size,))
            axis = bias.ndim - 1 if scale.ndim == 1 else None
        else:
            axis = 0 if scale.ndim == 1 else None
        q, clipped = quantize_bias(bias, scale, axis)
        if clipped:
            self.warnings.append(f"{describe(node)}: {clipped} bias value(s) exceed int32 at scale "
                                 "input_scale*weight_scale and were clipped")
        return q, np.asarray(scale), axis

    def gemm_attributes(self, node, keep_beta: bool):
        attrs = [a for a in node.attribute if a.name in ("alpha", "transA", "transB")]
        if keep_beta:
            attrs += [a for a in node.attribute if a.name == "beta"]
        return attrs


class QOperatorRewriter(_Rewriter):
    """Quantized compute ops become QLinear* ops; int8 tensors flow between them."""

    def __init__(self, g, cfg, act_params):
        super().__init__(g, cfg, act_params)
        self.int8: dict[str, str] = {}
        self.float_ready = set(g.graph_inputs) | set(g.initializers)

    def float_form(self, name: str) -> str:
        if not name or name in self.float_ready:
            return name
        if name in self.int8:
            scale, zero_point = self.param_inputs(name)
            self.emit("DequantizeLinear", [self.int8[name], scale, zero_point], [name])
            self.float_ready.add(name)
        return name

    def int8_form(self, name: str) -> str:
        if name in self.int8:
            return self.int8[name]
        if self.g.is_constant(name):
            self.int8[name] = self.quantized_constant(name)
            return self.int8[name]
        scale, zero_point = self.param_inputs(name)
        q_name = self.g.unique(f"{name}_quantized")
        self.emit("QuantizeLinear", [self.float_form(name), scale, zero_point], [q_name])
        self.int8[name] = q_name
        return q_name

    def quantized_input(self, name: str):
        scale, zero_point = self.param_inputs(name)
        return [self.int8_form(name), scale, zero_point]

    def produce(self, d: Decision) -> str:
        q_name = self.g.unique(f"{d.output}_quantized")
        self.int8[d.output] = q_name
        return q_name

    def run(self, decisions):
        for d in decisions:
            if d.status == "fused":
                continue
            if d.status == "compute":
                if d.rule.qlinear is None:
                    self.weight_only(d)
                else:
                    self.compute(d)
            elif d.status == "passthrough":
                self.passthrough(d)
            elif d.status == "reader":
                node = onnx.NodeProto()
                node.CopyFrom(d.node)
                node.input[0] = self.int8_form(d.node.input[0])
                self.nodes.append(node)
                self.float_ready.update(o for o in node.output if o)
            else:
                for name in node_reads(d.node):
                    self.float_form(name)
                self.nodes.append(d.node)
                self.float_ready.update(o for o in d.node.output if o)
        for name in self.g.graph_outputs:
            self.float_form(name)
        return self.nodes

    def compute(self, d: Decision):
        node, op = d.node, d.node.op_type
        out_scale, out_zero_point = self.param_inputs(d.output)
        attrs = list(node.attribute)
        if op in ("Conv", "MatMul", "Gemm"):
            a = node.input[0]
            inputs = self.quantized_input(a)
            if d.weight is not None:
                w_q, w_scale, w_zero_point, _ = self.weight(node.input[d.weight], d.axis)
                inputs += [w_q, w_scale, w_zero_point]
            else:
                inputs += self.quantized_input(node.input[1])
            bias = None
            if d.bias is not None:
                q, _, _ = self.bias_values(d, self.params(a), self.weight_params(d))
                bias = self.add_initializer(q, f"{node.input[d.bias]}_quantized")
            if op == "Conv":
                inputs += [out_scale, out_zero_point] + ([bias] if bias else [])
            elif op == "MatMul":
                inputs += [out_scale, out_zero_point]
                attrs = []
            else:
                inputs += [bias or "", out_scale, out_zero_point]
                attrs = self.gemm_attributes(node, keep_beta=False)
        elif op in ("Add", "Mul"):
            inputs = self.quantized_input(node.input[0]) + self.quantized_input(node.input[1])
            inputs += [out_scale, out_zero_point]
        elif op == "Where":
            inputs = [self.float_form(node.input[0])] + self.quantized_input(node.input[1]) \
                + self.quantized_input(node.input[2]) + [out_scale, out_zero_point]
        elif op == "Concat":
            inputs = [out_scale, out_zero_point]
            for name in node.input:
                inputs += self.quantized_input(name)
        else:
            inputs = self.quantized_input(node.input[0]) + [out_scale, out_zero_point]
            if op == "Softmax":
                axis = attribute(node, "axis", -1 if self.g.opset >= 13 else 1)
                attrs = [helper.make_attribute("axis", axis), helper.make_attribute("opset", self.g.opset)]
        new = helper.make_node(d.rule.qlinear, inputs, [self.produce(d)], name=node.name or None,
                               domain=d.rule.domain)
        new.attribute.extend(attrs)
        self.nodes.append(new)

    def weight_only(self, d: Decision):
        """An op with no QLinear form (ConvTranspose): float compute on int8-stored weights."""
        node = onnx.NodeProto()
        node.CopyFrom(d.node)
        w_q, w_scale, w_zero_point, params = self.weight(d.node.input[d.weight], d.axis)
        w_float = self.g.unique(f"{d.node.input[d.weight]}_dequantized")
        attrs = [helper.make_attribute("axis", d.axis)] if params.per_axis else None
        self.emit("DequantizeLinear", [w_q, w_scale, w_zero_point], [w_float], attrs=attrs)
        for i, name in enumerate(node.input):
            node.input[i] = w_float if i == d.weight else self.float_form(name)
        self.nodes.append(node)
        self.float_ready.update(node.output)

    def passthrough(self, d: Decision):
        node = onnx.NodeProto()
        node.CopyFrom(d.node)
        data = d.node.input[0]
        params = self.params(data)
        node.input[0] = self.int8_form(data)
        for i, name in enumerate(node.input[1:], start=1):
            node.input[i] = self.float_form(name)
        if node.op_type == "Pad" and (attribute(node, "mode", b"constant") in (b"constant", "constant")):
            # The pad value must be the quantized form of the float pad value (0.0 -> zero point).
            value_name = d.node.input[2] if len(d.node.input) > 2 else ""
            if value_name and not self.g.is_constant(value_name):
                # Computed (or fed) at run time: quantize it there, with the data's parameters.
                scale, zero_point = self.param_inputs(data)
                pad_name = self.g.unique(f"{node.output[0]}_pad_value")
                self.emit("QuantizeLinear", [value_name, scale, zero_point], [pad_name])
            else:
                value = np.float32(0.0)
                if value_name:
                    value = np.asarray(self.g.constant(value_name), np.float32).reshape(())
                pad_q = quantize_values(value.reshape(()), QParams(params.scale, params.zero_point, params.qtype))
                pad_name = self.add_initializer(pad_q, f"{node.output[0]}_pad_value")
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = pad_name
        shared_names = self.param_inputs(data)
        for i, out in enumerate(d.node.output):
            if out:
                node.output[i] = self.g.unique(f"{out}_quantized")
                self.int8[out] = node.output[i]
                self.act_params[out] = params
                self._param_names[out] = shared_names
        self.nodes.append(node)


class QDQRewriter(_Rewriter):
    """QuantizeLinear/DequantizeLinear pairs around float ops, int8 weights with a DequantizeLinear."""

    def __init__(self, g, cfg, act_params):
        super().__init__(g, cfg, act_params)
        self.dequantized: dict[str, str] = {}   # tensor -> name of its Q/DQ'd float form

    def emit_q(self, inputs, outputs, attrs=None):
        return self.emit("QuantizeLinear", inputs, outputs, domain=self.cfg.qdq_domain, attrs=attrs)

    def emit_dq(self, inputs, outputs, attrs=None):
        return self.emit("DequantizeLinear", inputs, outputs, domain=self.cfg.qdq_domain, attrs=attrs)

    def qdq_input(self, name: str) -> str:
        """The Q/DQ'd float form of an input; shared by its readers unless DedicatedQDQPair."""
        if name in self.dequantized:
            return self.dequantized[name]
        scale, zero_point = self.param_inputs(name)
        if self.g.is_constant(name):
            q_name = self.quantized_constant(name)
        else:
            q_name = self.g.unique(f"{name}_quantized")
            self.emit_q([name, scale, zero_point], [q_name])
        dq_name = self.g.unique(f"{name}_dequantized")
        self.emit_dq([q_name, scale, zero_point], [dq_name])
        if not self.cfg.dedicated_qdq_pair:
            self.dequantized[name] = dq_name
        return dq_name

    def qdq_output(self, node: onnx.NodeProto, index: int, tensor: str, params: QParams | None = None):
        """Renames the node's output and routes it through Q/DQ back to the original name.

        With DedicatedQDQPair a tensor read by several nodes gets no shared pair here: each
        quantized reader makes its own (:meth:`qdq_input`), float readers read it unchanged.
        """
        if params is not None:
            self.act_params[tensor] = params
        if self.cfg.dedicated_qdq_pair and len(self.g.consumers[tensor]) > 1 \
                and tensor not in self.g.graph_outputs:
            return
        scale, zero_point = self.param_inputs(tensor)
        before = self.g.unique(f"{tensor}_float")
        q_name = self.g.unique(f"{tensor}_quantized")
        node.output[index] = before
        self.emit_q([before, scale, zero_point], [q_name])
        self.emit_dq([q_name, scale, zero_point], [tensor])
        self.dequantized[tensor] = tensor

    def weight_dq(self, name: str, axis, bias_guard=None, block_size=0):
        key = ("dq", name, axis, block_size)
        if key not in self._weights:
            dq_name = self.g.unique(f"{name}_dequantized")
            if self.cfg.add_qdq_pair_to_weight:
                # AddQDQPairToWeight: the float weight stays, a QuantizeLinear quantizes it at run time.
                params = self.weight_qparams(name, axis, block_size=block_size)
                if bias_guard is not None:
                    params = widened_for_bias(params, *bias_guard)
                scale, zero_point = self.g.unique(f"{name}_scale"), self.g.unique(f"{name}_zero_point")
                self.initializers += [scale_tensor(params, scale), zero_point_tensor(params, zero_point)]
                w_q = self.g.unique(f"{name}_quantized")
                self.emit_q([name, scale, zero_point], [w_q], attrs=_attributes(params))
            else:
                w_q, scale, zero_point, params = self.weight(name, axis, bias_guard=bias_guard, block_size=block_size)
            self.emit_dq([w_q, scale, zero_point], [dq_name], attrs=_attributes(params))
            self._weights[key] = (dq_name, params)
        return self._weights[key]

    def run(self, decisions):
        for d in decisions:
            if d.status == "fused":
                continue
            node = onnx.NodeProto()
            node.CopyFrom(d.node)
            if d.status == "compute":
                self.compute(d, node)
            elif d.status == "passthrough":
                data = d.node.input[0]
                params = self.params(data)
                node.input[0] = self.qdq_input(data)
                self.nodes.append(node)
                for i, out in enumerate(d.node.output):
                    if out:
                        self._param_names[out] = self.param_inputs(data)
                        self.qdq_output(node, i, out, params)
            else:
                self.nodes.append(node)
        return self.nodes

    def compute(self, d: Decision, node):
        src = d.node
        for i in d.acts:
            node.input[i] = self.qdq_input(src.input[i])
        quantize_bias = d.bias is not None and self.cfg.quantize_bias
        weight_params = None
        if d.weight is not None:
            guard = None
            if quantize_bias and self.cfg.adjust_weight_for_int32_bias:
                guard = (self.params(src.input[0]).scale, self.bias_float(d))
            node.input[d.weight], weight_params = self.weight_dq(src.input[d.weight], d.axis, guard, d.block_size)
        if quantize_bias:
            weight_params = weight_params or self.weight_params(d)
            q, scale, axis = self.bias_values(d, self.params(src.input[0]), weight_params)
            q_name = self.add_initializer(q, f"{src.input[d.bias]}_quantized")
            s_name = self.add_initializer(scale, f"{src.input[d.bias]}_scale")
            dq_name = self.g.unique(f"{src.input[d.bias]}_dequantized")
            attrs = [helper.make_attribute("axis", axis)] if axis is not None else None
            self.emit_dq([q_name, s_name], [dq_name], attrs=attrs)
            node.input[d.bias] = dq_name
            if src.op_type == "Gemm":
                # beta and 1/alpha are folded into the int32 bias (see bias_values).
                del node.attribute[:]
                node.attribute.extend(self.gemm_attributes(src, keep_beta=False))
                node.attribute.append(helper.make_attribute("beta", 1.0))
        self.nodes.append(node)
        if src.op_type not in self.cfg.outputs_not_quantized:
            self.qdq_output(node, 0, d.output)
