"""A session's results are the caller's own, and its options are honoured or refused, never ignored."""
import logging
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import qrt
from qrt.errors import InvalidArgument


def _aliasing_model():
    """Outputs that a plan hands back without a kernel writing a fresh buffer: the feed itself, an
    Identity of it, an initializer, an Identity of the initializer, a Reshape (a view) of it, and
    the same tensor twice; ``sig`` is an ordinary kernel result."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
            [("x", [2, 3]), ("x_id", [2, 3]), ("c", [2, 3]), ("c_id", [2, 3]), ("c_flat", [6]),
             ("c_id2", [2, 3]), ("sig", [2, 3])]]
    c = helper.make_tensor("c", TensorProto.FLOAT, [2, 3], [1, 2, 3, 4, 5, 6])
    flat = helper.make_tensor("flat", TensorProto.INT64, [1], [6])
    nodes = [helper.make_node("Identity", ["x"], ["x_id"]),
             helper.make_node("Identity", ["c"], ["c_id"]),
             helper.make_node("Identity", ["c_id"], ["c_id2"]),
             helper.make_node("Reshape", ["c", "flat"], ["c_flat"]),
             helper.make_node("Sigmoid", ["x"], ["sig"])]
    graph = helper.make_graph(nodes, "aliasing", [x], outs, [c, flat])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("level", [qrt.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   qrt.GraphOptimizationLevel.ORT_ENABLE_ALL])
def test_writing_into_results_never_changes_feeds_or_later_runs(level):
    model = _aliasing_model()
    options = qrt.SessionOptions()
    options.graph_optimization_level = level
    sess = qrt.InferenceSession(model.SerializeToString(), options)
    feed = np.arange(6, dtype=np.float32).reshape(2, 3)
    pristine = feed.copy()
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": pristine.copy()})
    first = sess.run(None, {"x": feed})
    for i, out in enumerate(first):
        assert not np.shares_memory(out, feed)
        assert all(not np.shares_memory(out, other) for other in first[i + 1:])
        out += 100.0        # the caller owns its results
    np.testing.assert_array_equal(feed, pristine)
    second = sess.run(None, {"x": feed})
    for got, want in zip(second, expected):
        # 1e-6 relative: the copies are exact, the sigmoid may differ from onnxruntime's by an ulp
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    named = sess.run(["c_flat", "c"], {"x": feed})
    assert not np.shares_memory(named[0], named[1])


def _tiny():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    nodes = [helper.make_node("Neg", ["x"], ["n"], name="neg"), helper.make_node("Abs", ["n"], ["y"], name="abs")]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def _options(**settings):
    options = qrt.SessionOptions()
    for name, value in settings.items():
        setattr(options, name, value)
    return options


@pytest.mark.parametrize("make, named", [
    (lambda: qrt.InferenceSession(_tiny(), _options(inter_op_num_threads=4)), "inter_op_num_threads"),
    (lambda: qrt.InferenceSession(_tiny(), _options(execution_mode=qrt.ExecutionMode.ORT_PARALLEL)),
     "execution_mode"),
    (lambda: qrt.InferenceSession(_tiny(), _options(log_severity_level=7)), "log_severity_level"),
    (lambda: qrt.InferenceSession(_tiny(), _options(log_verbosity_level=-1)), "log_verbosity_level"),
    (lambda: qrt.InferenceSession(_tiny(), disabled_optimizers=["ConstantFolding"]), "disabled_optimizers"),
    (lambda: qrt.InferenceSession(_tiny(), providers=["CPUExecutionProvider"],
                                  provider_options=[{"arena_extend_strategy": "kSameAsRequested"}]),
     "arena_extend_strategy"),
    (lambda: qrt.InferenceSession(_tiny(), providers=[("CPUExecutionProvider", {"use_arena": "0"})]), "use_arena"),
    (lambda: qrt.InferenceSession(_tiny(), provider_options=[{}]), "provider_options"),
])
def test_options_qrt_cannot_honour_are_refused_by_name(make, named):
    with pytest.raises(InvalidArgument, match=named):
        make()


@pytest.mark.parametrize("options", [qrt.SessionOptions, qrt.RunOptions])
def test_options_qrt_does_not_know_are_refused_when_set(options):
    with pytest.raises(AttributeError, match="enable_mem_pattern"):
        options().enable_mem_pattern = False


def test_options_qrt_honours_are_accepted():
    options = _options(inter_op_num_threads=1, execution_mode=qrt.ExecutionMode.ORT_SEQUENTIAL)
    sess = qrt.InferenceSession(_tiny(), options, providers=["CPUExecutionProvider"], provider_options=[{}])
    x = np.array([[1, -2, 3], [-4, 5, -6]], dtype=np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.abs(x))


def test_run_options_terminate_stops_the_run_and_the_session_recovers():
    # Unoptimized, so Neg and Abs stay two nodes and the run can stop between them.
    sess = qrt.InferenceSession(_tiny(), _options(graph_optimization_level=qrt.GraphOptimizationLevel.ORT_DISABLE_ALL))
    x = np.ones((2, 3), np.float32)
    run_options = qrt.RunOptions()
    run_options.terminate = True
    with pytest.raises(qrt.RunTerminated, match="terminate"):
        sess.run(None, {"x": x}, run_options)

    reads = []

    class StopAfterFirstNode(qrt.RunOptions):
        """Sets terminate as the first node's output is seen, as another thread would mid-run."""

        @property
        def terminate(self):
            reads.append(1)
            return len(reads) > 1

        @terminate.setter
        def terminate(self, value):
            pass

    with pytest.raises(qrt.RunTerminated, match="after producing 'n'"):
        sess.run(None, {"x": x}, StopAfterFirstNode())
    np.testing.assert_array_equal(sess.run(None, {"x": x}, qrt.RunOptions())[0], x)
    with pytest.raises(InvalidArgument, match="run_options"):
        sess.run(None, {"x": x}, {"terminate": True})


def test_log_severity_levels_govern_the_qrt_session_logger(caplog):
    x = np.ones((2, 3), np.float32)
    with caplog.at_level(logging.DEBUG, logger="qrt.session"):
        quiet = qrt.InferenceSession(_tiny())
        quiet.run(None, {"x": x})
        assert not caplog.records                       # default severity 2: nothing to warn about
        chatty = qrt.InferenceSession(_tiny(), _options(log_severity_level=0, log_verbosity_level=1, logid="me"))
        chatty.run(None, {"x": x})
        messages = [r.getMessage() for r in caplog.records]
        assert any("[me]" in m and "session ready" in m for m in messages)
        assert any("produced y" in m for m in messages) and any("ran on feeds" in m for m in messages)
        caplog.clear()
        run_options = qrt.RunOptions()
        run_options.log_severity_level = 0
        quiet.run(None, {"x": x}, run_options)          # a run may be verbose in a quiet session
        assert [r for r in caplog.records if "ran on feeds" in r.getMessage()]
        assert not [r for r in caplog.records if "produced" in r.getMessage()]


def test_intra_op_threads_do_not_leak_into_the_callers_thread():
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs a Numba thread pool of 2 or more")
    numba.set_num_threads(2)
    sess = qrt.InferenceSession(_tiny(), _options(intra_op_num_threads=1))
    sess.run(None, {"x": np.ones((2, 3), np.float32)})
    assert numba.get_num_threads() == 2


def test_numba_runs_on_a_thread_safe_layer_or_sessions_refuse(tmp_path):
    code = ("import numpy as np, numba, qrt\n"
            "from test_session_reliability import _tiny\n"
            "try:\n"
            "    qrt.InferenceSession(_tiny())\n"
            "    print('layer', numba.threading_layer())\n"
            "except qrt.QrtError as exc:\n"
            "    print('refused', exc)\n")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here] + sys.path))
    env.pop("NUMBA_THREADING_LAYER", None)
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert default.stdout.split()[:2] in (["layer", "omp"], ["layer", "tbb"]), default.stdout + default.stderr
    env["NUMBA_THREADING_LAYER"] = "workqueue"
    forced = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert forced.stdout.startswith("refused") and "'workqueue'" in forced.stdout, forced.stdout + forced.stderr


def test_soak_10000_runs_with_varying_batch_sizes_keep_memory_flat():
    # The shipped CNN (Conv, BatchNorm, MaxPool, Gemm: kernels with per-shape caches and scratch
    # buffers) at batch sizes 1..8 in turn. After a warm-up that meets every size, 10,000 runs may
    # grow RSS by under 5 MB: a leak of one 40-byte output a run would already be 400 KB, one
    # cached plan per run far more.
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("reads RSS from /proc")

    def rss():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    sess = qrt.InferenceSession(os.path.join(os.path.dirname(qrt.__file__), "data", "digits_cnn.onnx"))
    rng = np.random.default_rng(16)
    feeds = [{"image": rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)} for batch in range(1, 9)]
    for i in range(400):
        sess.run(None, feeds[i % 8])
    before = rss()
    for i in range(10_000):
        sess.run(None, feeds[i % 8])
    grown = rss() - before
    assert grown < 5_000_000, f"RSS grew by {grown} bytes over 10,000 runs"
