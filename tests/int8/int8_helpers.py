"""Shared helpers for the int8 tests: one-node models, runners for qrt / onnxruntime / onnx.reference,
random quantized data and the "within one quantization step" comparison."""
from __future__ import annotations

import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import qrt



def stable_seed(*parts) -> int:
    """A seed derived from a test case's parameters that, unlike hash(), is the same in every
    process (PYTHONHASHSEED), so a failing case reproduces."""
    return zlib.crc32(repr(parts).encode())


def tensor_type(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def node_model(op_type, feeds: dict, consts: dict, outputs: list, attrs=None, domain="", opset=21,
               input_order=None):
    """A one-node model. ``feeds`` become graph inputs, ``consts`` initializers; ``input_order`` lists
    the node's input names ('' for an omitted optional input). ``outputs``: [(name, dtype)] or
    [(name, dtype, rank)] (rank defaults to the first feed's; dims are symbolic)."""
    order = input_order or list(feeds) + list(consts)
    node = helper.make_node(op_type, order, [o[0] for o in outputs], domain=domain, **(attrs or {}))
    inputs = [helper.make_tensor_value_info(n, tensor_type(v.dtype), list(v.shape)) for n, v in feeds.items()]
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in consts.items()]
    default_rank = next(iter(feeds.values())).ndim if feeds else 0
    outs = []
    for spec in outputs:
        name, dt = spec[0], spec[1]
        rank = spec[2] if len(spec) > 2 else default_rank
        outs.append(helper.make_tensor_value_info(name, tensor_type(dt), [f"{name}_{i}" for i in range(rank)]))
    graph = helper.make_graph([node], op_type.lower(), inputs, outs, inits)
    imports = [helper.make_opsetid("", opset)]
    if domain:
        imports.append(helper.make_opsetid(domain, 1))
    return helper.make_model(graph, opset_imports=imports, ir_version=10)


def run_qrt(model, feeds, **options):
    so = qrt.SessionOptions()
    for k, v in options.items():
        setattr(so, k, v)
    return qrt.InferenceSession(model.SerializeToString(), so).run(None, feeds)


def run_ort(model, feeds, optimize=True):
    import onnxruntime as ort
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def run_reference(model, feeds):
    from onnx.reference import ReferenceEvaluator
    return ReferenceEvaluator(model).run(None, feeds)


def random_q(rng, shape, dtype):
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, size=shape).astype(dtype)


def steps_apart(a, b) -> int:
    """Largest absolute difference between two integer tensors, in quantization steps."""
    a = np.asarray(a).astype(np.int64)
    b = np.asarray(b).astype(np.int64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a - b).max()) if a.size else 0


def assert_within_one_step(got, want, max_fraction=1.0):
    """Every element within one step; at most ``max_fraction`` of them off by one (rounding ties)."""
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    assert diff.max(initial=0) <= 1, f"{int(diff.max())} steps apart"
    assert (diff > 0).mean() <= max_fraction if diff.size else True, f"{(diff > 0).mean():.3f} of elements differ"


def scalar(value, dtype):
    return np.array(value, dtype=dtype)


