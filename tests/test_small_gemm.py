"""A packed float product picks its kernel by size: small ones run on the calling thread, where a
parallel launch (~2 us even on one thread) would cost more than the product (the MLP regression)."""
import numba
import numpy as np
import pytest

import model_builders
import qrt
from qrt.kernels.cpu import sgemm, threads

pytestmark = pytest.mark.skipif(sgemm.ISA != "avx512", reason="the packed path is taken on AVX-512 hosts only")


def _record(monkeypatch):
    calls = []
    for name in ("rows_times_packed", "rows_times_packed_serial"):
        original = getattr(sgemm, name)
        monkeypatch.setattr(sgemm, name, lambda *args, _f=original, _n=name: (calls.append(_n), _f(*args))[1])
    return calls


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two kernel threads")
@pytest.mark.parametrize("rows,depth,cols,kernel", [
    (1, 64, 128, "rows_times_packed_serial"),       # 8K multiply-adds: one thread's work
    (8, 128, 10, "rows_times_packed_serial"),
    (4, 128, 120, "rows_times_packed_serial"),      # 61440: just under WORK_PER_THREAD
    (4, 128, 128, "rows_times_packed"),             # 65536: a second thread's share
    (128, 64, 128, "rows_times_packed"),
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
    assert calls and set(calls) == {"rows_times_packed_serial"}
