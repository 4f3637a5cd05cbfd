"""CUDA provider cases for the Numba CUDA simulator; run by tests/cuda/test_cuda.py in a
subprocess with NUMBA_ENABLE_CUDASIM=1 (the variable must be set before numba is imported, so
these cases cannot share a process with the rest of the suite, which needs real Numba).

The kernel tunables are patched small (4-thread tiles, 8-thread 1-D blocks capped at 3 blocks,
4-thread row reductions) so multi-block, multi-tile and grid-stride paths all run on tiny tensors.
"""
import gc
import os
import sys
import weakref

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("run through tests/cuda/test_cuda.py (needs NUMBA_ENABLE_CUDASIM=1)", allow_module_level=True)

# The simulator runs each CUDA thread as a Python thread; a short switch interval makes
# syncthreads-heavy kernels (the tiled GEMM) about 15x faster under the GIL.
sys.setswitchinterval(5e-5)

from qrt.kernels.cuda import config  # noqa: E402

config.THREADS = 8
config.MAX_BLOCKS = 3
config.REDUCE_THREADS = 4
config.GEMM_BM = config.GEMM_BN = 4
config.GEMM_BK = 4
config.GEMM_TM = config.GEMM_TN = 2

import qrt  # noqa: E402
from qrt.errors import NodeExecutionError, QrtError  # noqa: E402
from qrt.kernels.cuda import checks  # noqa: E402
from qrt.kernels.cuda import device as dev  # noqa: E402

CASES = checks.op_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kernel_matches_cpu_twin(case):
    worst, allowed, fallbacks, message = checks.run_case(case)
    assert worst is not None, message
    assert worst <= allowed, f"{case.name}: {message}"
    assert fallbacks == 0, f"{case.name} ran its host kernel"


def test_cuda_is_available_under_the_simulator():
    assert qrt.get_available_providers()[0] == "CUDAExecutionProvider"


def _rng_feed(shape, seed=3):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_float_cnn_matches_cpu_and_runs_on_cuda():
    model, _ = checks.float_cnn()
    got, expected, placement, fallbacks = checks.compare_sessions(model, {"x": _rng_feed((2, 1, 8, 8))})
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)
    assert isinstance(got[0], np.ndarray)
    for node in ("conv1", "relu1", "pool1", "conv2", "flatten", "fc"):
        assert placement[node] == "CUDAExecutionProvider", placement
    assert fallbacks == 0


def test_int8_cnn_matches_cpu_exactly_and_runs_on_cuda():
    model = checks.int8_cnn()
    got, expected, placement, fallbacks = checks.compare_sessions(model, {"x": _rng_feed((2, 1, 8, 8))})
    np.testing.assert_array_equal(got[0], expected[0])
    for node in ("quant", "qconv1", "pool1", "qconv2", "qfc", "dequant"):
        assert placement[node] == "CUDAExecutionProvider", placement
    assert fallbacks == 0


def test_float_mlp_matches_cpu():
    model, _ = checks.float_mlp()
    got, expected, placement, fallbacks = checks.compare_sessions(model, {"x": _rng_feed((3, 16))})
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)
    computed = {name: p for name, p in placement.items() if not name.startswith("copy ")}
    assert computed and set(computed.values()) == {"CUDAExecutionProvider"}, placement
    assert fallbacks == 0


def test_int8_mlp_runs_on_cuda_and_agrees_with_onnxruntime():
    import onnxruntime
    model = checks.int8_mlp()
    feeds = {"x": _rng_feed((3, 16))}
    sess = qrt.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
    got = sess.run(None, feeds)[0]
    ref = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    # onnxruntime's QLinearAdd rounds its float32 sum in another order: at most one step apart.
    np.testing.assert_allclose(got, ref, atol=0.06 + 1e-6)
    assert all(getattr(s.kernel, "host_fallbacks", 0) == 0 for s in sess._plan.steps)


def test_shape_arithmetic_stays_on_the_host():
    from onnx import TensorProto, helper
    n = helper.make_node
    nodes = [n("Relu", ["x"], ["r"]), n("Shape", ["r"], ["s"]), n("Reshape", ["r", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = qrt.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
    x = _rng_feed((2, 3))
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(x, 0))
    assert [s.op_type for s in sess._plan.steps].count("MemcpyToDevice") == 1


def _live_device_arrays():
    return [o for o in gc.get_objects() if type(o).__name__ in ("FakeCUDAArray", "DeviceNDArray")]


def test_cuda_error_mid_run_names_the_node_and_session_recovers(monkeypatch):
    from numba.cuda.cudadrv.driver import CudaAPIError
    from qrt.kernels.cuda import pool
    model, _ = checks.float_cnn()
    sess = qrt.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
    feeds = {"x": _rng_feed((1, 1, 8, 8))}
    good = sess.run(None, feeds)[0]
    gc.collect()
    baseline = len(_live_device_arrays())
    produced = []
    real_max_pool = pool.max_pool

    def failing_max_pool(x, geom, out):
        produced.append(weakref.ref(x))
        raise CudaAPIError(2, "CUDA_ERROR_OUT_OF_MEMORY")

    monkeypatch.setattr(pool, "max_pool", failing_max_pool)
    with pytest.raises(NodeExecutionError) as info:
        sess.run(None, feeds)
    assert "pool1" in str(info.value) and "CudaAPIError" in str(info.value)
    del info
    # The failed run's intermediates are dropped at once (the plan clears its tensors on failure);
    # the failing node's own input goes with the exception.
    gc.collect()
    assert produced and produced[0]() is None
    assert len(_live_device_arrays()) <= baseline
    monkeypatch.setattr(pool, "max_pool", real_max_pool)
    np.testing.assert_array_equal(sess.run(None, feeds)[0], good)


def test_weights_that_do_not_fit_the_device_fail_at_session_creation(monkeypatch):
    from numba.cuda.cudadrv.driver import CudaAPIError

    def no_memory(array):
        raise CudaAPIError(2, "CUDA_ERROR_OUT_OF_MEMORY")

    monkeypatch.setattr(dev, "upload", no_memory)
    model, _ = checks.float_cnn()
    with pytest.raises(QrtError) as info:
        qrt.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
    assert "conv1" in str(info.value) and "CUDA device" in str(info.value)


def test_constants_are_uploaded_once_per_session(monkeypatch):
    model, _ = checks.float_cnn()
    sess = qrt.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
    uploads = []
    real_upload = dev.upload
    monkeypatch.setattr(dev, "upload", lambda a: uploads.append(a.shape) or real_upload(a))
    sess.run(None, {"x": _rng_feed((1, 1, 8, 8))})
    sess.run(None, {"x": _rng_feed((1, 1, 8, 8))})
    assert uploads == [], uploads


def test_sequences_stay_on_the_host_in_a_cuda_session():
    """Sequence nodes have no device kernel, and Identity (which has one) must not take a sequence to
    the device: nodes touching a sequence run on the host, tensors taken out of it go to the device."""
    from onnx import TensorProto, helper
    F = TensorProto.FLOAT
    seq_type = helper.make_tensor_sequence_value_info
    nodes = [helper.make_node("Identity", ["seq"], ["same"]),
             helper.make_node("SequenceAt", ["same", "zero"], ["first"]),
             helper.make_node("Relu", ["first"], ["y"])]
    graph = helper.make_graph(nodes, "seq", [seq_type("seq", F, [None, None])],
                              [helper.make_tensor_value_info("y", F, [None, None]), seq_type("same", F, [None, None])],
                              [helper.make_tensor("zero", TensorProto.INT64, [], [-2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    options = qrt.SessionOptions()
    options.graph_optimization_level = qrt.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = qrt.InferenceSession(model, options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    placed = {s.op_type: s.provider for s in session.plan.steps}
    assert placed["Identity"] == placed["SequenceAt"] == "CPUExecutionProvider"
    assert placed["Relu"] == "CUDAExecutionProvider"
    seq = [np.array([[-1.0, 2.0]], np.float32), np.ones((1, 3), np.float32)]
    y, same = session.run(None, {"seq": seq})
    np.testing.assert_array_equal(y, [[0.0, 2.0]])
    assert isinstance(same, list) and all(a is b or np.array_equal(a, b) for a, b in zip(same, seq))


class _Reader:
    def __init__(self, feeds):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


_HEAVY = {"QLinearConv", "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearAveragePool",
          "QLinearGlobalAveragePool"}
_TABLES = {"QLinearSigmoid", "QLinearLeakyRelu"}


@pytest.mark.parametrize("quant_format, options", [("QOperator", {}), ("QDQ", {}),
                                                   ("QOperator", {"per_channel": True, "activation_type": "QUInt8"})],
                         ids=["qoperator-default", "qdq-default", "qoperator-per-channel-u8"])
def test_quantized_cnn_runs_every_heavy_node_on_cuda(quant_format, options):
    """A CNN quantized by qrt with default settings: every node (conv, gemm, the QLinear element-wise
    and table ops, QDQ groups once fused) is placed on the device, with the CPU provider's bytes."""
    from qrt.quantization import QuantType, quantize_static
    model, feeds = checks.quantizable_cnn()
    if "activation_type" in options:
        options = dict(options, activation_type=getattr(QuantType, options["activation_type"]))
    quantized = quantize_static(model, None, _Reader(feeds(3)), quant_format=quant_format, **options).model
    got, expected, placement, fallbacks = checks.compare_sessions(quantized, feeds(1, feed_seed=7, batch=2)[0])
    np.testing.assert_array_equal(got[0], expected[0])
    computed = {name: p for name, p in placement.items() if not name.startswith("copy ")}
    assert set(computed.values()) == {"CUDAExecutionProvider"}, placement
    assert fallbacks == 0
    session = qrt.InferenceSession(quantized.SerializeToString(), providers=["CUDAExecutionProvider"])
    op_types = {step.op_type for step in session._plan.steps}
    assert _HEAVY | _TABLES <= op_types, op_types    # the quantizer made every family


_INTEGER_PRODUCTS = [c for c in CASES if c.op_type in ("QLinearConv", "QLinearMatMul", "QGemm")]


@pytest.mark.parametrize("k_step", [4, 8])
@pytest.mark.parametrize("case", _INTEGER_PRODUCTS, ids=[c.name for c in _INTEGER_PRODUCTS])
def test_dp4a_path_matches_cpu_twin(case, k_step, monkeypatch):
    """The dp4a kernels (raw activation bytes, zero point in the bias; the simulator runs the
    instruction's arithmetic in plain code) give the CPU twin's bytes, with 1 and 2 words per K step."""
    from qrt.kernels.cuda import qconv, qgemm
    monkeypatch.setattr(config, "USE_DP4A", True)
    monkeypatch.setattr(config, "GEMM_BK", k_step)
    launched = []
    for module, factory in ((qgemm, "_qmatmul_dp4a"), (qconv, "_qconv_dp4a")):
        real = getattr(module, factory)
        monkeypatch.setattr(module, factory, lambda *p, real=real: launched.append(p) or real(*p))
    worst, allowed, fallbacks, message = checks.run_case(case)
    assert worst is not None and worst <= allowed, f"{case.name}: {message}"
    assert fallbacks == 0
    if "depthwise" not in case.name:
        assert launched, "the dp4a kernel was not used"


def test_dp4a_is_off_in_the_simulator_by_default():
    from qrt.kernels.cuda.gemm import use_dp4a
    assert config.USE_DP4A is None and not use_dp4a()
