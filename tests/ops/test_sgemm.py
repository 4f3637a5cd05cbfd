"""The float32 micro-kernel path (qrt.kernels.cpu.sgemm) against onnxruntime, on shapes that exercise
its edges: output channels and planes that are not whole 14 x 32 tiles, K = 1, groups, padding,
strides, dilations, no bias, fused activations, batches, non-contiguous inputs, a weight fed at run
time, and the generic (non-AVX-512) fallback in a subprocess.

Tolerance: qrt and onnxruntime add the K = C/group * taps products of each output in different
orders, so they may differ by the rounding of those sums. The bound used is the classic one for a
float32 sum of K products, ``K * eps32 * sum_k |w_k x_k|``, with the magnitude sum computed by
onnxruntime itself as the convolution of |X| with |W| (the activations used are 1-Lipschitz, so
the bound carries through them). A wrong index or a dropped tile is off by O(1) of that magnitude,
far above the bound (K * 6e-8 = 2e-5 relative at K = 288).
"""
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from qrt.kernels.cpu import sgemm
from qrt.kernels.cpu import threads as kernel_threads

pytestmark = pytest.mark.filterwarnings("ignore:.*onnx.checker objects")
RNG = np.random.default_rng(1212)
EPS32 = float(np.finfo(np.float32).eps)


def _conv_model(x_shape, w, b, attrs, activation=None, weight_input=False, params=None):
    inputs = ["x", "w"] + (["b"] if b is not None else [])
    if activation is None:
        node = helper.make_node("Conv", inputs, ["y"], **attrs)
    else:
        extra = {"activation_params": params} if params else {}
        node = helper.make_node("FusedConv", inputs, ["y"], domain="com.microsoft", activation=activation,
                                **attrs, **extra)
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    inits = [] if weight_input else [numpy_helper.from_array(w, "w")]
    if weight_input:
        graph_inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, w.shape))
    if b is not None:
        inits.append(numpy_helper.from_array(b, "b"))
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(len(x_shape))])
    graph = helper.make_graph([node], "g", graph_inputs, [output], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def check_conv(x, w, b=None, threads=1, activation=None, params=None, weight_input=False, **attrs):
    model = _conv_model(list(x.shape), w, b, attrs, activation, weight_input, params)
    feeds = {"x": x, "w": w} if weight_input else {"x": x}
    options = qrt.SessionOptions()
    options.intra_op_num_threads = threads
    got = qrt.InferenceSession(model.SerializeToString(), options).run(None, feeds)[0]
    want = _ort(model, feeds)
    # sum_k |w x| (+ |b|) per output, by onnxruntime on magnitudes, without the activation.
    plain = _conv_model(list(x.shape), np.abs(w), None if b is None else np.abs(b), attrs, None, weight_input)
    magnitude = _ort(plain, {"x": np.abs(x), "w": np.abs(w)} if weight_input else {"x": np.abs(x)})
    depth = w.shape[1] * int(np.prod(w.shape[2:])) + 1
    assert got.shape == want.shape and got.dtype == np.float32
    bound = depth * EPS32 * magnitude + 1e-30
    excess = np.abs(got.astype(np.float64) - want) - bound
    assert np.all(excess <= 0), f"worst excess {excess.max()} at {np.unravel_index(excess.argmax(), excess.shape)}"


def _randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("channels_out", [1, 2, 3, 5, 13, 14, 15, 17, 29, 31, 45])
def test_output_channels_not_whole_blocks(channels_out):
    check_conv(_randn(1, 6, 9, 11), _randn(channels_out, 6, 3, 3), _randn(channels_out), pads=[1, 1, 1, 1])


@pytest.mark.parametrize("plane", [(1, 1), (1, 31), (5, 7), (4, 8), (1, 33), (9, 13)])
def test_planes_not_whole_strips(plane):
    check_conv(_randn(1, 4, *plane), _randn(16, 4, 1, 1), _randn(16))


def test_depth_one():
    check_conv(_randn(2, 1, 7, 40), _randn(20, 1, 1, 1), _randn(20))


@pytest.mark.parametrize("attrs", [
    {"strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"strides": [2, 1], "pads": [0, 2, 1, 0]},
    {"dilations": [2, 2], "pads": [2, 2, 2, 2]},
    {"group": 2, "pads": [1, 1, 1, 1]},
    {"group": 3, "strides": [2, 2]},
    {"auto_pad": "SAME_UPPER", "strides": [3, 3]},
])
def test_window_geometry(attrs):
    group = attrs.get("group", 1)
    check_conv(_randn(2, 6, 23, 37), _randn(18, 6 // group, 3, 3), _randn(18), **attrs)


def test_no_bias_batch_and_large_plane_two_threads():
    # 70x70 plane: several column tiles of TILE_COLUMNS, split over two workers.
    check_conv(_randn(3, 8, 70, 70), _randn(30, 8, 3, 3), None, threads=2, pads=[1, 1, 1, 1])


def test_pointwise_reads_image_in_place():
    check_conv(_randn(2, 40, 17, 19), _randn(33, 40, 1, 1), _randn(33), threads=2)


@pytest.mark.parametrize("rank", [1, 3])
def test_other_ranks(rank):
    spatial = (29,) if rank == 1 else (5, 6, 7)
    kernel = (3,) * rank
    check_conv(_randn(1, 5, *spatial), _randn(17, 5, *kernel), _randn(17), pads=[1] * (2 * rank))


def test_non_contiguous_input():
    x = _randn(1, 5, 12, 26)[:, :, :, ::2]
    assert not x.flags.c_contiguous
    check_conv(x, _randn(15, 5, 3, 3), _randn(15), pads=[1, 1, 1, 1])


def test_weight_fed_at_run_time():
    check_conv(_randn(1, 7, 10, 10), _randn(20, 7, 3, 3), _randn(20), weight_input=True, pads=[1, 1, 1, 1])


@pytest.mark.parametrize("activation,params", [
    ("Relu", None), ("Clip", [-0.5, 0.75]), ("LeakyRelu", [0.1]), ("Sigmoid", None), ("HardSigmoid", [0.2, 0.5]),
    ("Tanh", None),
])
def test_fused_activations(activation, params):
    check_conv(_randn(1, 9, 13, 35), _randn(29, 9, 3, 3), _randn(29), activation=activation, params=params,
               pads=[1, 1, 1, 1])


def test_relu_keeps_nan():
    x = _randn(1, 3, 4, 40)
    x[0, 1, 2, 5] = np.nan
    w = _randn(16, 3, 1, 1)
    model = _conv_model(list(x.shape), w, None, {}, "Relu")
    got = qrt.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(_ort(model, {"x": x})))
    assert np.isnan(got[:, :, 2, 5]).all()


@pytest.mark.skipif(sgemm.ISA != "avx512", reason="the micro-kernel is compiled for AVX-512 only")
def test_inner_loop_is_zmm_fma_with_broadcasts():
    from numba import njit

    @njit(cache=False)
    def call(a, b, c, bias):
        sgemm._mk14(a, 0, 1, 14, b, 0, 32, 64, c, 0, 32, bias, 0, np.float32(0.0), np.float32(np.inf))

    a, b = np.ones(14 * 64, np.float32), np.ones(32 * 64, np.float32)
    c, bias = np.zeros(14 * 32, np.float32), np.zeros(14, np.float32)
    call(a, b, c, bias)
    np.testing.assert_array_equal(c, 64.0)
    asm = call.inspect_asm(call.signatures[0])
    fmas = [line for line in asm.splitlines() if "vfmadd231ps" in line]
    assert len(fmas) >= 28 and all("zmm" in line for line in fmas)
    assert sum("vbroadcastss" in line for line in asm.splitlines()) >= 14


def test_generic_fallback_in_subprocess():
    """QRT_SGEMM_ISA=generic (what a CPU without AVX-512 gets) keeps convolutions on im2col + BLAS."""
    code = (
        "import numpy as np\n"
        "from qrt.kernels.cpu import sgemm\n"
        "assert sgemm.ISA == 'generic', sgemm.ISA\n"
        "from qrt.ops.conv import _uses_sgemm\n"
        "assert not _uses_sgemm(np.dtype(np.float32)) and not sgemm.packs_matrix(np.ones((2, 2), np.float32))\n"
        "import test_sgemm as t\n"
        "t.test_output_channels_not_whole_blocks(17)\n"
        "t.test_fused_activations('Clip', [-0.5, 0.75])\n"
        "t.test_window_geometry({'group': 2, 'pads': [1, 1, 1, 1]})\n"
        "t.test_matmul_constant_weight((16, 70), 33)\n"
        "t.test_gemm_constant_weight(1, 1, (1, 45))\n"
        "print('ok')\n"
    )
    env = dict(os.environ, QRT_SGEMM_ISA="generic")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__)] + [p for p in sys.path if p])
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def _product_model(node, a_shape, inits):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, n) for n, v in inits.items()])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def check_product(model, a, magnitude_model, depth):
    """qrt against onnxruntime within ``depth * eps32 * sum |a b|`` (see the module docstring)."""
    got = qrt.InferenceSession(model.SerializeToString()).run(None, {"a": a})[0]
    want = _ort(model, {"a": a})
    magnitude = _ort(magnitude_model, {"a": np.abs(a)})
    assert got.shape == want.shape and got.dtype == np.float32
    excess = np.abs(got.astype(np.float64) - want) - (depth + 1) * EPS32 * magnitude
    assert np.all(excess <= 0), f"worst excess {excess.max()}"


@pytest.mark.parametrize("a_shape", [(1, 70), (2, 70), (13, 70), (16, 70), (57, 70), (3, 5, 70), (70,), (0, 70)])
@pytest.mark.parametrize("cols", [1, 31, 33, 100])
def test_matmul_constant_weight(a_shape, cols):
    b = _randn(70, cols)
    model = _product_model(helper.make_node("MatMul", ["a", "b"], ["y"]), list(a_shape), {"b": b})
    magnitude = _product_model(helper.make_node("MatMul", ["a", "b"], ["y"]), list(a_shape), {"b": np.abs(b)})
    check_product(model, _randn(*a_shape), magnitude, 70)


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("c_shape", [None, (45,), (1, 45), (1,), (20, 45)])
def test_gemm_constant_weight(trans_a, trans_b, c_shape):
    b = _randn(45, 37) if trans_b else _randn(37, 45)
    inits = {"b": b}
    inputs = ["a", "b"]
    if c_shape is not None:
        inits["c"] = _randn(*c_shape)
        inputs.append("c")
    attrs = {"transA": trans_a, "transB": trans_b, "beta": 0.5}
    a_shape = [37, 20] if trans_a else [20, 37]
    model = _product_model(helper.make_node("Gemm", inputs, ["y"], **attrs), a_shape, inits)
    abs_inits = {k: np.abs(v) for k, v in inits.items()}
    magnitude = _product_model(helper.make_node("Gemm", inputs, ["y"], **attrs), a_shape, abs_inits)
    check_product(model, _randn(*a_shape), magnitude, 37)


@pytest.mark.parametrize("activation,params", [("Relu", {}), ("LeakyRelu", {"activation_alpha": 0.2}),
                                               ("Sigmoid", {}), ("Tanh", {})])
def test_fused_gemm_activations(activation, params):
    inits = {"b": _randn(64, 50), "c": _randn(50)}
    node = helper.make_node("FusedGemm", ["a", "b", "c"], ["y"], domain="com.microsoft", activation=activation,
                            **params)
    model = _product_model(node, [9, 64], inits)
    magnitude = _product_model(helper.make_node("Gemm", ["a", "b", "c"], ["y"]), [9, 64],
                               {k: np.abs(v) for k, v in inits.items()})
    check_product(model, _randn(9, 64), magnitude, 64)


@pytest.mark.skipif(sgemm.ISA != "avx512", reason="the micro-kernel paths are taken on AVX-512 hosts only")
def test_micro_kernel_paths_are_taken(monkeypatch):
    calls = []
    for name in ("conv_sgemm", "conv_implicit", "rows_times_packed"):
        original = getattr(sgemm, name)
        recorder = lambda *args, _f=original, _n=name: (calls.append(_n), _f(*args))[1]
        monkeypatch.setattr(sgemm, name, recorder)
        # Small work runs the kernel's serial twin (threads.call_with_threads): record that too.
        twin = kernel_threads._SERIAL[original]
        monkeypatch.setitem(kernel_threads._SERIAL, recorder,
                            lambda *args, _t=twin, _n=name: (calls.append(_n), _t(*args))[1])
    check_conv(_randn(1, 3, 8, 8), _randn(5, 3, 3, 3), _randn(5))
    check_conv(_randn(1, 3, 8, 8), _randn(5, 3, 3, 3), _randn(5), strides=[2, 2])
    check_conv(_randn(1, 3, 8, 8), _randn(5, 3, 1, 1), _randn(5))
    test_matmul_constant_weight((2, 70), 33)
    test_gemm_constant_weight(0, 1, (45,))
    assert calls == ["conv_implicit", "conv_implicit", "conv_sgemm", "rows_times_packed", "rows_times_packed"]
