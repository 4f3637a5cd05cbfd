"""How float kernels use the second thread, and that it never changes a result.

- Float kernels take the parallel variant only from 64K work units (adds or multiply-adds; an exp-
  or polynomial-based function's element counts 8) per thread (threads.threads_for, the rule the
  int8 kernels follow): below that a launch costs more than the work. Results are identical at 1 and 2 threads, bit for bit (each element or row runs the same
  code whichever thread takes it), and agree with onnxruntime.
- The fused element-wise parallel variant equals the serial one on row counts that do not split
  evenly into blocks.
- A bidirectional LSTM runs its two directions on two threads: identical to one thread.
- qrt's OpenMP default: workers spin briefly (GOMP_SPINCOUNT) unless the user chose a wait policy.
"""
import os
import subprocess
import sys

import numba
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from qrt.kernels.cpu import fused_elementwise as fe
from qrt.kernels.cpu import rnn as krnn
from qrt.kernels.cpu import threads

TWO_THREADS = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")


def _session(model, count):
    options = qrt.SessionOptions()
    options.intra_op_num_threads = count
    return qrt.InferenceSession(model.SerializeToString(), options)


def _ort(model, feeds):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _float_chain(rows, width):
    """SiLU (fused into one element-wise kernel), LayerNormalization and Softmax over (rows, width)."""
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["silu"]),
             helper.make_node("LayerNormalization", ["silu", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-5),
             helper.make_node("Softmax", ["ln"], ["y"], axis=-1)]
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.uniform(0.5, 1.5, width).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.uniform(-0.5, 0.5, width).astype(np.float32), "beta")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, width]),
                               helper.make_tensor_value_info("silu", TensorProto.FLOAT, [rows, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@TWO_THREADS
@pytest.mark.parametrize("rows", [3, 150])   # 3 x 768: serial at both counts; 150 x 768 (115K): parallel at 2
def test_float_chain_identical_at_one_and_two_threads_and_matches_onnxruntime(rows):
    model = _float_chain(rows, 768)
    x = np.random.default_rng(rows).standard_normal((rows, 768)).astype(np.float32) * 3
    one = _session(model, 1).run(None, {"x": x})
    two = _session(model, 2).run(None, {"x": x})
    # The serial and parallel variants are two compilations of the same per-row code with fastmath
    # reassociation: LLVM may vectorize a row's sum differently in each (seen once in a full-suite run,
    # 1 ulp on 14% of the softmax outputs), so equal within 2 ulp, not bit for bit; a row computed twice,
    # skipped or misplaced by the split is off by far more.
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=2.4e-7, atol=0)
    # float32 softmax of normalized values and a polynomial sigmoid: a few ulps from onnxruntime's.
    for got, want in zip(two, _ort(model, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


class _Recorder:
    """Stands in for a generated fused module and records which variant ran."""

    def __init__(self, module):
        self.module, self.calls = module, []

    def __getattr__(self, name):
        if name not in ("run_serial", "run_parallel"):
            raise AttributeError(name)

        def run(*args):
            self.calls.append(name)
            return getattr(self.module, name)(*args)
        return run


@TWO_THREADS
def test_fused_kernel_goes_parallel_from_one_threads_share_of_work_only():
    # A sigmoid element counts COSTLY_ELEMENT work units; a thread's share is WORK_PER_THREAD units.
    recorder = _Recorder(fe.single_op("Sigmoid"))
    share = threads.WORK_PER_THREAD // fe.COSTLY_ELEMENT
    small = np.ones((4, share // 8), np.float32)   # half of one share
    large = np.ones((4, share), np.float32)        # four shares
    numba.set_num_threads(2)
    try:
        fe.run_single(recorder, small)
        fe.run_single(recorder, large)
        assert recorder.calls == ["run_serial", "run_parallel"]
        numba.set_num_threads(1)
        fe.run_single(recorder, large)
        assert recorder.calls[-1] == "run_serial"
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


@TWO_THREADS
@pytest.mark.parametrize("rows", [1, 7, 37, 160])
def test_fused_parallel_variant_equals_serial_on_uneven_blocks(rows):
    # Inputs of every layout: full, per-channel (the channel phase must follow each block's first row),
    # per-row-position, and a scalar.
    kinds = [fe.FULL, fe.CHANNEL, fe.ROW, fe.SCALAR]
    program = [("Sigmoid", [("in", 0)], ()), ("Mul", [("in", 1), ("tmp", 0)], ()),
               ("Add", [("in", 2), ("tmp", 1)], ()), ("Mul", [("in", 3), ("tmp", 2)], ())]
    module = fe.load(fe.generate_source(kinds, {3: 1.5}, program))
    rng = np.random.default_rng(rows)
    period, channels = 50, 5
    x = rng.standard_normal(rows * period).astype(np.float32)
    per_channel = rng.standard_normal(channels).astype(np.float32)
    per_position = rng.standard_normal(period).astype(np.float32)
    serial, parallel = np.empty_like(x), np.empty_like(x)
    module.run_serial(x, per_channel, per_position, serial, rows, period, channels)
    numba.set_num_threads(2)
    try:
        module.run_parallel(x, per_channel, per_position, parallel, rows, period, channels)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(parallel, serial)
    r = np.arange(rows).repeat(period)
    want = 1.5 * (per_position[np.tile(np.arange(period), rows)]
                  + per_channel[r % channels] * (1 / (1 + np.exp(-x.astype(np.float64)))))
    np.testing.assert_allclose(serial, want, rtol=1e-5, atol=1e-6)


@TWO_THREADS
@pytest.mark.parametrize("op_type, arity", [("Add", 2), ("Div", 2), ("Sum", 2), ("Max", 2), ("Relu", 1),
                                            ("HardSwish", 1)])
def test_large_elementwise_ops_split_across_threads_with_identical_results(op_type, arity, monkeypatch):
    from qrt.ops import elementwise
    shape = [2, 80, 28, 28]   # 125K elements: two threads' shares
    names = [f"x{i}" for i in range(arity)]
    node = helper.make_node(op_type, names, ["y"])
    graph = helper.make_graph([node], op_type, [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
                                                for n in names], [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    rng = np.random.default_rng(7)
    feeds = {n: (rng.standard_normal(shape) * 4).astype(np.float32) for n in names}
    split = []
    across = elementwise._across_threads
    monkeypatch.setattr(elementwise, "_across_threads", lambda *a: split.append(across(*a)) or split[-1])
    one = _session(model, 1).run(None, feeds)[0]
    assert all(out is None for out in split)
    two = _session(model, 2).run(None, feeds)[0]
    assert split and split[-1] is not None
    np.testing.assert_array_equal(one, two)
    # Exact for the arithmetic ops; HardSwish's gate is rounded differently near 0 (differences <= 6e-8).
    np.testing.assert_allclose(two, _ort(model, feeds)[0], rtol=1e-6, atol=1e-7)


def _pool_model(op_type, shape, **attrs):
    node = helper.make_node(op_type, ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], op_type, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])   # AveragePool dilations: 19


@TWO_THREADS
@pytest.mark.parametrize("op_type, attrs", [
    ("GlobalAveragePool", {}), ("GlobalMaxPool", {}),
    ("AveragePool", {"kernel_shape": [7, 7]}),                       # one window over each plane: the global kernel
    ("AveragePool", {"kernel_shape": [7, 7], "ceil_mode": 1, "strides": [2, 2]}),
    ("LpPool", {"kernel_shape": [7, 7], "p": 2}),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]})])
def test_pools_identical_at_one_and_two_threads_and_match_onnxruntime(op_type, attrs):
    shape = [1, 1536, 7, 7]   # 75K elements: parallel at 2 threads
    model = _pool_model(op_type, shape, **attrs)
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    one = _session(model, 1).run(None, {"x": x})[0]
    two = _session(model, 2).run(None, {"x": x})[0]
    np.testing.assert_array_equal(one, two)
    # Sums of 49 float32 values in float64 (qrt) against float32 (onnxruntime): a few ulps apart.
    np.testing.assert_allclose(two, _ort(model, {"x": x})[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    {"kernel_shape": [2, 3], "strides": [3, 2], "pads": [0, 2, 1, 0], "ceil_mode": 1},
    {"kernel_shape": [3, 2], "strides": [1, 3], "dilations": [2, 1], "pads": [2, 0, 0, 1]},
    {"kernel_shape": [2, 2], "strides": [2, 2]}])
def test_small_plane_average_pool_matches_onnxruntime(attrs):
    # 13 x 11 planes take the whole-plane kernel (k.average_pool_small); strides 1, 2 and 3 take its
    # three column-tap loops; ceil_mode overhangs and asymmetric pads read its zero padding.
    shape = [2, 5, 13, 11]
    model = _pool_model("AveragePool", shape, **attrs)
    x = np.random.default_rng(11).standard_normal(shape).astype(np.float32)
    got = _session(model, 1).run(None, {"x": x})[0]
    want = _ort(model, {"x": x})[0]
    assert got.shape == want.shape
    # At most 9 float32 terms summed in another order: within a few ulps.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@TWO_THREADS
@pytest.mark.parametrize("shape, perm", [([1, 3, 80, 28, 28], [0, 2, 1, 3, 4]),     # ShuffleNet's channel shuffle
                                         ([2, 4, 6, 70, 32], [0, 3, 1, 2, 4]),
                                         ([8, 96, 12, 16], [1, 0, 2, 3])])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_transpose_swapping_blocks_across_threads_equals_numpy(shape, perm, dtype, monkeypatch):
    from qrt.kernels.cpu import movement
    calls = []
    swap = movement.swap_middle_axes
    monkeypatch.setattr(movement, "swap_middle_axes", lambda *a: (calls.append(1), swap(*a))[1])
    node = helper.make_node("Transpose", ["x"], ["y"], perm=perm)
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.INT64
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info("x", elem, shape)],
                              [helper.make_tensor_value_info("y", elem, [shape[p] for p in perm])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = (np.random.default_rng(2).standard_normal(shape) * 100).astype(dtype)
    got = _session(model, 2).run(None, {"x": x})[0]
    assert calls
    np.testing.assert_array_equal(got, x.transpose(perm))


def _bidirectional_lstm(seq, hidden, width):
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((2, 4 * hidden, width)) * 0.1).astype(np.float32), "W"),
             numpy_helper.from_array((rng.standard_normal((2, 4 * hidden, hidden)) * 0.1).astype(np.float32), "R"),
             numpy_helper.from_array((rng.standard_normal((2, 8 * hidden)) * 0.1).astype(np.float32), "B")]
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "y_h", "y_c"], direction="bidirectional",
                            hidden_size=hidden)
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, 1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [seq, 2, 1, hidden]),
                               helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [2, 1, hidden]),
                               helper.make_tensor_value_info("y_c", TensorProto.FLOAT, [2, 1, hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@TWO_THREADS
def test_bidirectional_lstm_directions_on_two_threads(monkeypatch):
    # hidden 128, input 64: 4 * 128 * 192 = 98K multiply-adds per step, so 2 threads take the parallel kernel.
    model = _bidirectional_lstm(seq=6, hidden=128, width=64)
    calls = []
    parallel = krnn.lstm_directions_parallel
    monkeypatch.setattr(krnn, "lstm_directions_parallel", lambda *a: (calls.append(1), parallel(*a))[1])
    x = np.random.default_rng(0).standard_normal((6, 1, 64)).astype(np.float32)
    one = _session(model, 1).run(None, {"x": x})
    assert not calls
    two = _session(model, 2).run(None, {"x": x})
    assert calls
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    for got, want in zip(two, _ort(model, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


_SHOW_SPIN = "import os, qrt; print(os.environ.get('GOMP_SPINCOUNT'))"


@pytest.mark.parametrize("user, expected", [({}, "30000"), ({"OMP_WAIT_POLICY": "PASSIVE"}, "None"),
                                            ({"GOMP_SPINCOUNT": "5"}, "5")])
def test_openmp_workers_spin_briefly_unless_the_user_chose(user, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(user)
    root = os.path.dirname(os.path.dirname(os.path.abspath(qrt.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", _SHOW_SPIN], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == expected
