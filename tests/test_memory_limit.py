"""SessionOptions.memory_limit_bytes: a run that would pass the limit is refused before it allocates.

The model is Tile -> MatMul -> Expand -> ReduceSum on x (N, 4) with a symbolic N, so the bytes of each
intermediate are known exactly: t and m are (N, 256) float32 (1024 N bytes each), e is (4, N, 256)
(4096 N) and y (N, 256). The plan frees t after the MatMul and m after the Expand, so the run's
tensors peak at m + e = e + y = 5120 N bytes, first at the Expand.
"""
import time
import tracemalloc

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from qrt.errors import InvalidArgument, MemoryLimitExceeded

N = 2048
ROW = 1024                      # bytes of one (1, 256) float32 row
PEAK = 5 * ROW * N


def _model(copies=None):
    """The chain; with ``copies`` None the Expand's shape is the constant (4, 1, 1), else a feed ``shape``."""
    weight = (np.random.default_rng(0).standard_normal((256, 256)) / 16).astype(np.float32)
    n = helper.make_node
    nodes = [n("Tile", ["x", "reps"], ["t"], name="tile"), n("MatMul", ["t", "w"], ["m"], name="matmul"),
             n("Expand", ["m", "shape"], ["e"], name="expand"),
             n("ReduceSum", ["e", "axes"], ["y"], name="sum", keepdims=0)]
    inits = [numpy_helper.from_array(np.array([1, 64], np.int64), "reps"), numpy_helper.from_array(weight, "w"),
             numpy_helper.from_array(np.array([0], np.int64), "axes")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])]
    if copies is None:
        inits.append(numpy_helper.from_array(np.array([4, 1, 1], np.int64), "shape"))
    else:
        inputs.append(helper.make_tensor_value_info("shape", TensorProto.INT64, [3]))
    graph = helper.make_graph(nodes, "chain", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                     ["N", 256])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _session(model, limit, profiling=False):
    options = qrt.SessionOptions()
    options.memory_limit_bytes = limit
    options.enable_profiling = profiling
    return qrt.InferenceSession(model, options)


def _x(rows=N):
    return np.random.default_rng(1).standard_normal((rows, 4)).astype(np.float32)


def _reference(model, feeds):
    return onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _nodes_run(session):
    import json
    import os
    path = session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    return [e["name"] for e in events if e.get("cat") == "Node"]


def test_a_limit_at_the_peak_runs_and_matches_onnxruntime():
    model = _model()
    session = _session(model, PEAK)
    assert [s.op_type for s in session.plan.steps] == ["Tile", "MatMul", "Expand", "ReduceSum"]
    feeds = {"x": _x()}
    session.run(None, feeds)     # compiles the kernels, whose allocations are not the run's
    tracemalloc.start()
    got = session.run(None, feeds)[0]
    allocated = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # float32 MatMul over 256 terms, summed in another order than onnxruntime's.
    np.testing.assert_allclose(got, _reference(model, feeds), rtol=1e-5, atol=1e-5)
    # The allocation the limit speaks of is real: the run did hold about the peak at once.
    assert PEAK <= allocated < PEAK + ROW * N


def test_a_limit_one_byte_below_the_peak_refuses_before_any_node_runs():
    session = _session(_model(), PEAK - 1, profiling=True)
    tracemalloc.start()
    with pytest.raises(MemoryLimitExceeded) as error:
        session.run(None, {"x": _x()})
    allocated = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    message = str(error.value)
    assert "chain" in message and "'expand' (Expand)" in message
    assert f"{PEAK:,} bytes" in message and f"{PEAK - 1:,} bytes" in message and "memory_limit_bytes" in message
    assert allocated < ROW * N // 4     # not even the first intermediate (ROW * N bytes)
    assert _nodes_run(session) == []


def test_a_huge_declared_batch_fails_fast_and_the_session_still_answers():
    model = _model()
    session = _session(model, 1 << 30)
    huge = np.broadcast_to(np.ones((1, 4), np.float32), (2 ** 31, 4))   # declares 2**31 rows, holds one
    start = time.perf_counter()
    with pytest.raises(MemoryLimitExceeded, match=f"{5 * ROW * 2 ** 31:,} bytes"):
        session.run(None, {"x": huge})
    assert time.perf_counter() - start < 2.0
    feeds = {"x": _x(64)}
    np.testing.assert_allclose(session.run(None, feeds)[0], _reference(model, feeds), rtol=1e-5, atol=1e-5)


def test_a_size_known_only_from_a_feeds_values_is_checked_before_that_node():
    """Expand's shape is a feed: the run-start walk cannot size e, so the Expand is checked when reached."""
    model = _model(copies="fed")
    session = _session(model, PEAK, profiling=True)
    fits = {"x": _x(), "shape": np.array([4, 1, 1], np.int64)}
    np.testing.assert_allclose(session.run(None, fits)[0], _reference(model, fits), rtol=1e-5, atol=1e-5)
    _nodes_run(session)
    tracemalloc.start()
    too_many = {"x": _x(), "shape": np.array([8, 1, 1], np.int64)}     # m + 8 copies: 9 ROW N bytes
    refusal = rf"'expand' \(Expand\).*{9 * ROW * N:,} bytes.*known from the values"
    with pytest.raises(MemoryLimitExceeded, match=refusal):
        session.run(None, too_many)
    allocated = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert _nodes_run(session) == ["tile", "matmul"]
    assert allocated < 3 * ROW * N      # t and m, never the 8 ROW N of e
    np.testing.assert_allclose(session.run(None, fits)[0], _reference(model, fits), rtol=1e-5, atol=1e-5)


def test_shapes_computed_from_shapes_are_sized_at_run_start():
    """Expand to Concat([4], Shape(m)): the walk carries Shape's value, so nothing is left to check per node."""
    n = helper.make_node
    nodes = [n("Relu", ["x"], ["m"]), n("Shape", ["m"], ["s"]), n("Concat", ["four", "s"], ["shape"], axis=0),
             n("Expand", ["m", "shape"], ["y"], name="expand")]
    graph = helper.make_graph(nodes, "shapes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, "N", 256])],
                              [numpy_helper.from_array(np.array([4], np.int64), "four")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    need = 5 * ROW * N + 24      # m, y and the Concat's three int64
    feeds = {"x": _x(N).repeat(64, axis=1)}
    session = _session(model, need)
    assert session._memory.check(feeds) is None
    np.testing.assert_array_equal(session.run(None, feeds)[0], _reference(model, feeds))
    with pytest.raises(MemoryLimitExceeded, match=f"'expand' \\(Expand\\).*{need:,} bytes"):
        _session(model, need - 1).run(None, feeds)


@pytest.mark.parametrize("value", [-1, 1.5, "lots", True, [1]])
def test_invalid_limits_are_refused_naming_the_option(value):
    options = qrt.SessionOptions()
    options.memory_limit_bytes = value
    with pytest.raises(InvalidArgument, match="memory_limit_bytes"):
        qrt.InferenceSession(_model(), options)


def test_the_session_config_entry_sets_the_limit_and_unknown_entries_are_refused():
    options = qrt.SessionOptions()
    options.add_session_config_entry("qrt.memory_limit_bytes", str(PEAK - 1))
    assert options.get_session_config_entry("qrt.memory_limit_bytes") == str(PEAK - 1)
    with pytest.raises(MemoryLimitExceeded):
        qrt.InferenceSession(_model(), options).run(None, {"x": _x()})
    with pytest.raises(InvalidArgument, match="qrt.memory_limit_bytes"):
        options.add_session_config_entry("qrt.memory_limit_bytes", "-5")
    with pytest.raises(InvalidArgument, match="session.intra_op.allow_spinning"):
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")


def test_no_limit_costs_nothing_per_run():
    for value in (None, 0):
        options = qrt.SessionOptions()
        options.memory_limit_bytes = value
        assert qrt.InferenceSession(_model(), options)._memory is None


def _measured_peak(session, feeds):
    """The largest sum of ``nbytes`` of the tensors a run holds at once, measured by watching it."""
    steps, sizes, live, peak = session.plan.steps, {}, [0], [0]

    def before(index, env):
        for name in steps[index - 1].release if index else ():
            live[0] -= sizes.pop(name, 0)

    def observe(name, value):
        sizes[name] = int(getattr(value, "nbytes", 0))
        live[0] += sizes[name]
        peak[0] = max(peak[0], live[0])

    session.plan.run(feeds, observe=observe, before=before)
    return peak[0]


@pytest.mark.parametrize("level", [qrt.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   qrt.GraphOptimizationLevel.ORT_ENABLE_ALL])
def test_the_shipped_cnn_needs_what_its_run_measures(level):
    """digits_cnn as planned (FusedConv and fused element-wise ops at ORT_ENABLE_ALL): the run-start
    verdict is the measured peak to the byte, so a limit one byte lower refuses and the peak passes."""
    import os
    path = os.path.join(os.path.dirname(qrt.__file__), "data", "digits_cnn.onnx")
    options = qrt.SessionOptions()
    options.graph_optimization_level = level
    session = qrt.InferenceSession(path, options)
    spec = session.get_inputs()[0]
    feeds = {spec.name: np.random.default_rng(2).random([d if isinstance(d, int) else 5 for d in spec.shape],
                                                        dtype=np.float32)}
    peak = _measured_peak(session, feeds)
    options.memory_limit_bytes = peak
    limited = qrt.InferenceSession(path, options)
    assert limited._memory.check(feeds) is None          # every shape known at run start
    np.testing.assert_array_equal(limited.run(None, feeds)[0], session.run(None, feeds)[0])
    options.memory_limit_bytes = peak - 1
    with pytest.raises(MemoryLimitExceeded, match=f"{peak:,} bytes"):
        qrt.InferenceSession(path, options).run(None, feeds)
