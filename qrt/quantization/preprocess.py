"""Pre-processing that makes real exports quantizable.

Exporters leave weights in ``Constant`` nodes (or behind Identity/Transpose/Cast of constants),
keep BatchNormalization separate from the Conv before it, list weights as graph inputs, or use an
opset too old for per-axis QuantizeLinear. A quantizer that only looks for initializers then
quantizes those weights as activations or leaves them in float. Here :mod:`qrt.optimizer` folds
all of that into plain initializers first, and shape inference (symbolic dims kept) supplies the
element types the rewrite needs; the holes it leaves are filled afterwards from a qrt run
(:func:`qrt.quantization.feeds.with_complete_types`).
"""
from __future__ import annotations

import os

import onnx
from onnx import helper, version_converter

from qrt.errors import QuantizationError

# Per-axis QuantizeLinear/DequantizeLinear (and the QLinear ops' per-channel weights) need opset 13.
MIN_OPSET = 13

def _default_opset(model):
    return next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), None)


def _weights_out_of_inputs(model: onnx.ModelProto) -> int:
    """Drops initializers from the graph inputs: once quantized they cannot be fed at run time."""
    names = {t.name for t in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in names]
    removed = len(model.graph.input) - len(kept)
    if removed:
        del model.graph.input[:]
        model.graph.input.extend(kept)
    return removed


def _restate_stale_output_ranks(model: onnx.ModelProto) -> list[str]:
    """Graph outputs whose declared rank shape inference contradicts get the inferred shape; returns their
    names. Exporters leave such stale annotations (ddddocr's common.onnx declares [1, seqlen] for a rank-3
    output), and raising the opset can let inference see through to the contradiction, which onnx's
    checker then reports as an error of the quantized model."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for output in probe.graph.output:
        output.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    restated = []
    for declared, found in zip(model.graph.output, inferred.graph.output):
        want, got = declared.type.tensor_type, found.type.tensor_type
        if want.HasField("shape") and got.HasField("shape") and len(want.shape.dim) != len(got.shape.dim):
            want.shape.CopyFrom(got.shape)
            restated.append(declared.name)
    return restated


def preprocess(model: onnx.ModelProto, label: str = "model", min_opset: int = MIN_OPSET,
               optimize: bool = True) -> tuple[onnx.ModelProto, list[str]]:
    """Returns (float model ready for quantization, notes on what was changed). ``model`` is not modified.

    ``min_opset``: the opset the model is converted to if below (21 for 16-bit and 4-bit types).
    ``optimize=False`` skips qrt.optimizer's passes (shape inference still runs).
    """
    from qrt.optimizer import prepare_for_quantization

    notes = []
    work = onnx.ModelProto()
    work.CopyFrom(model)
    opset = _default_opset(work)
    if opset is None:
        raise QuantizationError(f"{label}: the model imports no ai.onnx opset")
    if opset < min_opset:
        try:
            work = version_converter.convert_version(work, min_opset)
        except Exception as exc:
            raise QuantizationError(f"{label}: opset {opset} is below {min_opset}, which the requested "
                                    f"quantization needs, and onnx's version converter failed: {exc}") from None
        notes.append(f"opset {opset} converted to {min_opset}")
    removed = _weights_out_of_inputs(work)
    if removed:
        notes.append(f"{removed} initializer(s) removed from the graph inputs")
    # IR < 4 requires every initializer to be a graph input; the opsets in use fix the minimum IR.
    needed_ir = max(4, helper.find_min_ir_version_for(list(work.opset_import), ignore_unknown=True))
    if work.ir_version < needed_ir:
        notes.append(f"IR version {work.ir_version} raised to {needed_ir}")
        work.ir_version = needed_ir

    before = {n.op_type for n in work.graph.node}
    n_before = len(work.graph.node)
    try:
        # The optimizer's default passes (constant folding, BatchNormalization/Pad/bias into Conv,
        # MatMul+Add into Gemm, eliminations), then shape inference with symbolic dims kept.
        work = prepare_for_quantization(work, passes=None if optimize else [])
    except Exception as exc:
        raise QuantizationError(f"{label}: pre-processing with qrt.optimizer failed: {exc}") from exc
    restated = _restate_stale_output_ranks(work)
    if restated:
        notes.append(f"declared shape of output(s) {', '.join(map(repr, restated))} replaced by the inferred one "
                     f"(the declared rank was wrong)")
    after = [n.op_type for n in work.graph.node]
    if "Constant" in before and "Constant" not in after:
        notes.append("Constant nodes folded into initializers")
    if "BatchNormalization" in before and "BatchNormalization" not in after:
        notes.append("BatchNormalization folded into Conv")
    if len(after) != n_before:
        notes.append(f"graph optimized from {n_before} to {len(after)} nodes")
    return work, notes


def quant_pre_process(input_model=None, output_model_path=None, skip_optimization=False, skip_onnx_shape=False,
                      skip_symbolic_shape=False, auto_merge=False, int_max=2 ** 31 - 1, guess_output_rank=False,
                      verbose=0, save_as_external_data=False, all_tensors_to_one_file=False,
                      external_data_location=None, external_data_size_threshold=1024, **deprecated_kwargs):
    """onnxruntime's ``quant_pre_process`` name and arguments over qrt's pre-processing.

    qrt's steps replace onnxruntime's: :mod:`qrt.optimizer`'s passes stand for its optimization
    (``skip_optimization=True`` leaves them out) and onnx shape inference with data propagation,
    symbolic dims kept, for its two inference steps. The model is tagged
    ``onnx.quant.pre_process`` as onnxruntime tags it, so onnxruntime's quantizer sees it as
    pre-processed. onnxruntime's symbolic-inference tuning arguments (``skip_symbolic_shape``,
    ``auto_merge``, ``int_max``, ``guess_output_rank``, ``verbose``) have nothing to tune in
    qrt's inference and are accepted as they are; ``skip_onnx_shape`` with
    ``skip_symbolic_shape`` skips shape inference (the quantizer infers types again anyway).
    Writes ``output_model_path`` atomically; returns None, as onnxruntime's does.
    """
    from qrt.model import load_model

    from .model_io import save

    if input_model is None:
        input_model = deprecated_kwargs.pop("input_model_path", None)
    if deprecated_kwargs:
        raise QuantizationError(f"quant_pre_process: unexpected argument(s) {sorted(deprecated_kwargs)}")
    if input_model is None or output_model_path is None:
        raise QuantizationError("quant_pre_process needs input_model and output_model_path")
    try:
        model = load_model(input_model)
    except Exception as exc:
        raise QuantizationError(f"quant_pre_process: {exc}") from None
    if skip_onnx_shape and skip_symbolic_shape:
        from qrt.optimizer import optimize
        work = optimize(model) if not skip_optimization else model
    else:
        work, _ = preprocess(model, "model", min_opset=min(MIN_OPSET, _default_opset(model) or MIN_OPSET),
                             optimize=not skip_optimization)
    props = {p.key: p.value for p in work.metadata_props}
    props.setdefault("onnx.quant.pre_process", "onnxruntime.quant")
    helper.set_model_props(work, props)
    if save_as_external_data:
        onnx.save_model(work, os.fspath(output_model_path), save_as_external_data=True,
                        all_tensors_to_one_file=all_tensors_to_one_file, location=external_data_location,
                        size_threshold=external_data_size_threshold)
    else:
        save(work, output_model_path)
