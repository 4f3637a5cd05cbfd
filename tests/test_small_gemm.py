"""Small float products and convolutions run the serial twin of their parallel kernel
(threads.serial_twin): a parallel launch costs ~2 us even on one thread, more than a small layer's
whole product (the batch-1 MLP went from 1.9x to 3.7x of onnxruntime that way)."""
import numba
import numpy as np
import pytest

import model_builders
import qrt
from qrt.kernels.cpu import sgemm, threads

pytestmark = pytest.mark.skipif(sgemm.ISA != "avx512", reason="the packed path is taken on AVX-512 hosts only")


def _record(monkeypatch):
    """Records which compile of sgemm.rows_times_packed runs: "parallel", or "serial" for its twin."""
    calls = []
    kernel = sgemm.rows_times_packed
    twin = threads._SERIAL[kernel]

    def parallel(*args):
        calls.append("parallel")
        return kernel(*args)

    def serial(*args):
        calls.append("serial")
        return twin(*args)
    monkeypatch.setattr(sgemm, "rows_times_packed", parallel)
    monkeypatch.setitem(threads._SERIAL, parallel, serial)
    return calls


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two kernel threads")
@pytest.mark.parametrize("rows,depth,cols,kernel", [
    (1, 64, 128, "serial"),       # 8K multiply-adds: one thread's work
    (8, 128, 10, "serial"),
    (4, 128, 120, "serial"),      # 61440: just under WORK_PER_THREAD
    (4, 128, 128, "parallel"),    # 65536: a second thread's share
    (128, 64, 128, "parallel"),
])
def test_kernel_follows_thread_rule(monkeypatch, rows, depth, cols, kernel):
    rng = np.random.default_rng(0)
    b = rng.standard_normal((depth, cols)).astype(np.float32)
    a = rng.standard_normal((rows, depth)).astype(np.float32)
    bias = rng.standard_normal(cols).astype(np.float32)
    packed = sgemm.PackedMatrix(b)
    calls = _record(monkeypatch)
    previous = threads.num_threads()
    threads.set_num_threads(2)
    try:
        out = packed.product(a, packed.padded_bias(bias))
    finally:
        threads.set_num_threads(previous)
    assert calls == [kernel]
    # Both kernels sum each output in K order from one FMA accumulator, like a float64 reference
    # rounded once per step: 1e-5 relative of the magnitude sum |a| @ |b| bounds the difference.
    expected = a.astype(np.float64) @ b + bias
    bound = 1e-5 * (np.abs(a) @ np.abs(b) + np.abs(bias))
    assert np.all(np.abs(out - expected) <= bound)


def test_mlp_layers_run_serial_at_batch_one(monkeypatch):
    """The model-level view: a batch-1 MLP's MatMuls and Gemms all take the serial kernel."""
    model = model_builders.mlp()
    calls = _record(monkeypatch)
    options = qrt.SessionOptions()
    options.intra_op_num_threads = 2
    session = qrt.InferenceSession(model.SerializeToString(), options)
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    session.run(None, {"input": x})
    assert calls and set(calls) == {"serial"}


def _conv_model(channels, out_channels, size):
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(2)
    w = rng.standard_normal((out_channels, channels, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_channels, size, size])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two kernel threads")
@pytest.mark.parametrize("channels,out_channels,size,serial", [(8, 8, 8, True), (32, 64, 32, False)])
def test_conv_runs_serial_twin_when_small(monkeypatch, channels, out_channels, size, serial):
    """A digits-sized Conv (37K multiply-adds: one thread's work) runs the serial compile of the
    parallel kernel (threads.serial_twin); a large one launches the parallel kernel on both threads."""
    import onnxruntime as ort
    model, w = _conv_model(channels, out_channels, size)
    twin = threads._SERIAL[sgemm.conv_implicit]
    calls = []
    monkeypatch.setitem(threads._SERIAL, sgemm.conv_implicit, lambda *args: (calls.append(1), twin(*args))[1])
    options = qrt.SessionOptions()
    options.intra_op_num_threads = 2
    x = np.random.default_rng(3).standard_normal((1, channels, size, size)).astype(np.float32)
    got = qrt.InferenceSession(model.SerializeToString(), options).run(None, {"x": x})[0]
    assert bool(calls) == serial
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # float32 sums of 9 * channels products in different orders: 1e-5 of the magnitude sum bounds them.
    magnitude = ort.InferenceSession(_conv_model_abs(model, w), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.abs(x)})[0]
    assert np.all(np.abs(got - want) <= 1e-5 * magnitude + 1e-6)


def _conv_model_abs(model, w):
    from onnx import numpy_helper
    absolute = type(model)()
    absolute.CopyFrom(model)
    absolute.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.abs(w), "w"))
    return absolute.SerializeToString()
