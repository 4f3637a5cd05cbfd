"""``quantize_weight_only``: blockwise 2/4/8-bit weights, activations left in float.

The output is what onnxruntime's ``MatMulNBitsQuantizer`` writes, so either runtime runs it:

* MatMul with a constant 2-D float weight ``B [K, N]`` -> com.microsoft ``MatMulNBits`` (``B``
  packed ``[N, k_blocks, block_size * bits / 8]``, ``scales [N * k_blocks]``, zero points packed
  uint8, or float for HQQ, or absent when ``symmetric``; ``accuracy_level`` written when not 0);
* Gather from a constant float table (embeddings) -> com.microsoft ``GatherBlockQuantized``
  (4-bit tables only: uint4 codes and zero points, int4 when ``symmetric``; blocks along the last
  axis), which onnxruntime's quantizer leaves in float for GPTQ and HQQ: on a small encoder the
  embedding is half of the weights. Tables are always quantized on the RTN grid (neither GPTQ,
  which needs a Hessian of the inputs, nor HQQ, whose zero points are float, applies).

Algorithms (:mod:`qrt.quantization.blockwise`): ``"rtn"`` (round to nearest, onnxruntime's grid),
``"gptq"`` (needs ``reader``: the float model runs in qrt on each calibration batch and the Hessian
``X^T X`` of every quantized MatMul's input is accumulated, one ``K x K`` matrix per distinct input
tensor, batch by batch) and ``"hqq"`` (no data). Every user error raises
:class:`qrt.errors.QuantizationError`; the input is never modified and the output is written
atomically.
"""
from __future__ import annotations

import warnings

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from calibration.readers import as_reader
from qrt.errors import QrtError, QuantizationError

from . import blockwise
from .graph import MS_DOMAIN
from .model_io import check_output, finish, load, save, serialized_size
from .summary import NodeReport, QuantizationSummary

ALGORITHMS = ("rtn", "gptq", "hqq")
_FLOAT_WEIGHTS = (np.dtype(np.float32), np.dtype(np.float16))
# GatherBlockQuantized takes int4/uint4 tables; MatMulNBits takes 2, 4 and 8 bits.
_TABLE_BITS = (4,)
# int4/uint4 initializers need IR version 10.
_INT4_IR_VERSION = 10


def quantize_weight_only(model_input, model_output=None, bits=4, block_size=32, symmetric=False, algorithm="rtn",
                         reader=None, nodes_to_exclude=(), quantize_embeddings=True, accuracy_level=0,
                         gptq_damp=0.1, use_external_data_format=False) -> QuantizationSummary:
    """Quantizes the constant weights of MatMul (and Gather) nodes of ``model_input`` blockwise.

    ``gptq_damp`` is GPTQ's dampening of the Hessian, relative to its mean diagonal. It defaults to
    0.1 rather than the paper's 0.01: a calibration set of a few hundred tokens leaves the Hessian of
    a 1536-wide input rank-deficient (on all-MiniLM-L6-v2 with 12 sentences, 4-bit block 32: minimum
    sentence-embedding cosine 0.972 at 0.01, 0.981 at 0.1).

    ``model_input`` is a path, bytes or ModelProto; ``model_output`` a path, or None to get the model
    only in the returned summary's ``model``. The summary lists the MatMul and Gather nodes, each
    quantized or kept in float with the reason. Nodes inside If/Loop/Scan bodies are left in float.
    """
    bits, block_size, accuracy_level = _check_arguments(bits, block_size, algorithm, reader, accuracy_level,
                                                        gptq_damp)
    check_output(model_input, model_output)
    source, label, size_before = load(model_input)
    graph = source.graph
    excluded = set(nodes_to_exclude or ())
    constants = {t.name: t for t in graph.initializer}
    overridable = {i.name for i in graph.input}

    def constant_float(name, min_rank):
        tensor = constants.get(name)
        if tensor is None or name in overridable:
            return None, "its weight is not a constant initializer"
        array = numpy_helper.to_array(tensor)
        if array.dtype not in _FLOAT_WEIGHTS:
            return None, f"its weight is {array.dtype}, not float32/float16"
        if array.ndim < min_rank:
            return None, f"its weight has rank {array.ndim}"
        return array, ""

    reports, plans = [], {}  # plans: index of the node in graph.node -> its float weight
    for index, node in enumerate(graph.node):
        if node.op_type not in ("MatMul", "Gather") or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or node.output[0]
        if name in excluded:
            reports.append(NodeReport(name, node.op_type, "float", "excluded by nodes_to_exclude"))
            continue
        if node.op_type == "MatMul":
            weight, why = constant_float(node.input[1], 2)
            if weight is not None and weight.ndim != 2:
                weight, why = None, f"its weight has shape {list(weight.shape)}, not 2-D"
        elif not quantize_embeddings:
            weight, why = None, "quantize_embeddings=False"
        elif bits not in _TABLE_BITS:
            weight, why = None, f"GatherBlockQuantized takes 4-bit tables, not {bits}-bit"
        else:
            weight, why = constant_float(node.input[0], 2)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if weight is not None and axis % weight.ndim == weight.ndim - 1:
                weight, why = None, "it gathers along the last axis, the one blocks would run along"
        if weight is None:
            reports.append(NodeReport(name, node.op_type, "float", why))
            continue
        plans[index] = weight
    if not plans:
        raise QuantizationError(f"{label}: no MatMul with a constant 2-D float weight (nor Gather from a "
                                "constant table) to quantize")

    hessians = {}
    if algorithm == "gptq":
        wanted = sorted({n.input[0] for i, n in enumerate(graph.node) if i in plans and n.op_type == "MatMul"})
        hessians = _input_hessians(source, label, wanted, reader)

    nodes, new_initializers, inverse_hessians = [], [], {}
    for index, node in enumerate(graph.node):
        weight = plans.get(index)
        if weight is None:
            nodes.append(node)
            continue
        name = node.name or node.output[0]
        if node.op_type == "MatMul":
            if algorithm == "gptq" and node.input[0] not in inverse_hessians:  # q, k and v share theirs
                inverse_hessians[node.input[0]] = blockwise.gptq_inverse_hessian(hessians.pop(node.input[0]),
                                                                                 gptq_damp)
            nodes.append(_matmul_nbits(node, weight, bits, block_size, symmetric, algorithm,
                                       inverse_hessians.get(node.input[0]), accuracy_level, new_initializers))
            detail = f"MatMulNBits ({bits}-bit {algorithm}, block {block_size})"
        else:
            nodes.append(_gather_block_quantized(node, weight, block_size, symmetric, new_initializers))
            detail = f"GatherBlockQuantized (4-bit rtn, block {block_size})"
        reports.append(NodeReport(name, node.op_type, "quantized", detail))

    if source.ir_version < _INT4_IR_VERSION and any(n.op_type == "GatherBlockQuantized" for n in nodes):
        source.ir_version = _INT4_IR_VERSION
    quantized = finish(source, nodes, new_initializers, label)
    summary = QuantizationSummary(mode="weight-only", model_name=label,
                                  output_path=None if model_output is None else str(model_output),
                                  size_before=size_before, size_after=serialized_size(quantized), nodes=reports,
                                  model=quantized)
    if model_output is not None:
        summary.size_after = save(quantized, model_output, use_external_data_format)
    return summary


def _check_arguments(bits, block_size, algorithm, reader, accuracy_level, damp):
    try:
        bits, block_size, accuracy_level = int(bits), int(block_size), int(accuracy_level)
    except (TypeError, ValueError):
        raise QuantizationError(f"bits, block_size and accuracy_level must be integers, got {bits!r}, "
                                f"{block_size!r}, {accuracy_level!r}") from None
    if bits not in (2, 4, 8):
        raise QuantizationError(f"bits must be 2, 4 or 8 (MatMulNBits), got {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise QuantizationError(f"block_size must be a power of 2 >= 16, got {block_size}")
    if algorithm not in ALGORITHMS:
        raise QuantizationError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "gptq" and reader is None:
        raise QuantizationError("algorithm='gptq' needs calibration data: pass reader=")
    if algorithm == "hqq" and bits != 4:
        raise QuantizationError("algorithm='hqq' writes float zero points, which MatMulNBits takes for 4 bits only")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise QuantizationError(f"accuracy_level must be 0..4, got {accuracy_level}")
    if not 0 < float(damp) < 1:
        raise QuantizationError(f"gptq_damp must lie in (0, 1), got {damp}")
    return bits, block_size, accuracy_level


def _input_hessians(model, label, names, reader):
    """``sum X^T X`` over every calibration batch, per tensor in ``names`` (rows = all leading axes)."""
    from qrt import InferenceSession

    augmented = type(model)()
    augmented.CopyFrom(model)
    outputs = {o.name for o in augmented.graph.output}
    augmented.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                  for n in names if n not in outputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the extra outputs carry no shapes
        session = InferenceSession(augmented)
    sums = {}
    batches = 0
    for batches, feeds in enumerate(as_reader(reader), start=1):
        try:
            values = session.run(names, feeds)
        except QrtError as exc:
            raise QuantizationError(f"{label}: calibration batch {batches - 1} does not run: {exc}") from None
        for name, value in zip(names, values):
            x = np.asarray(value, np.float32).reshape(-1, value.shape[-1])
            if name not in sums:
                sums[name] = np.zeros((x.shape[1], x.shape[1]), np.float64)
            sums[name] += x.T @ x
    if not batches:
        raise QuantizationError(f"{label}: the calibration reader gave no batch")
    return sums


def _add(initializers, name, array):
    initializers.append(numpy_helper.from_array(array, name))
    return name


def _matmul_nbits(node, weight, bits, block_size, symmetric, algorithm, inverse_hessian, accuracy_level,
                  initializers):
    K, N = weight.shape
    w32 = weight.astype(np.float32)
    if algorithm == "gptq":
        codes, scale, zero = blockwise.gptq_quantize(w32, None, block_size, bits, symmetric, hinv=inverse_hessian)
    elif algorithm == "hqq":
        codes, scale, zero = blockwise.hqq_quantize(w32, block_size, bits)
    else:
        codes, scale, zero = blockwise.rtn(np.ascontiguousarray(w32.T, dtype=np.float64), block_size, bits,
                                           symmetric)
    base = node.input[1]
    inputs = [node.input[0], _add(initializers, f"{base}_Q{bits}", blockwise.pack_codes(codes, bits, block_size)),
              _add(initializers, f"{base}_scales", scale.astype(weight.dtype).reshape(-1))]
    if algorithm == "hqq":
        inputs.append(_add(initializers, f"{base}_zero_points", zero.astype(weight.dtype).reshape(-1)))
    elif not symmetric:
        inputs.append(_add(initializers, f"{base}_zero_points", blockwise.pack_zero_points(zero, bits)))
    attrs = {"K": K, "N": N, "bits": bits, "block_size": block_size}
    if accuracy_level:
        attrs["accuracy_level"] = accuracy_level
    return helper.make_node("MatMulNBits", inputs, list(node.output), name=f"{node.name}_Q{bits}" if node.name else "",
                            domain=MS_DOMAIN, **attrs)


def _gather_block_quantized(node, table, block_size, symmetric, initializers):
    """RTN blocks along the table's last axis, stored int4/uint4 as onnxruntime's quantizer stores them."""
    inner = table.shape[-1]
    rows = table.reshape(-1, inner).astype(np.float64)
    codes, scale, zero = blockwise.rtn(np.ascontiguousarray(rows), block_size, 4, symmetric)
    codes = codes[:, :inner].reshape(table.shape)
    scale_shape = table.shape[:-1] + (scale.shape[1],)
    base = node.input[0]
    elem = TensorProto.INT4 if symmetric else TensorProto.UINT4
    # symmetric codes are stored with the implicit zero point 8 folded out: int4 = code - 8
    stored = (codes.astype(np.int16) - 8) if symmetric else codes
    initializers.append(_four_bit(f"{base}_Q4", stored, elem))
    inputs = [initializers[-1].name, node.input[1],
              _add(initializers, f"{base}_scales", scale.astype(table.dtype).reshape(scale_shape))]
    if not symmetric:
        initializers.append(_four_bit(f"{base}_zero_points", zero.reshape(scale_shape), elem))
        inputs.append(initializers[-1].name)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    return helper.make_node("GatherBlockQuantized", inputs, list(node.output),
                            name=f"{node.name}_Q4" if node.name else "", domain=MS_DOMAIN,
                            gather_axis=axis, quantize_axis=table.ndim - 1, block_size=block_size)


def _four_bit(name, values, elem):
    flat = (np.asarray(values).reshape(-1).astype(np.int16) & 15).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    return helper.make_tensor(name, elem, list(values.shape), packed.tobytes(), raw=True)
