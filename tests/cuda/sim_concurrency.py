"""Concurrent runs of CUDA sessions under the Numba CUDA simulator; run by tests/cuda/test_cuda.py in
a subprocess with NUMBA_ENABLE_CUDASIM=1, like ``sim_cases.py``.

Several threads share one session per model and each run's output must equal, bit for bit, what the
same session gave single-threaded. The simulator cannot run two kernels at once, so qrt launches
one simulated kernel at a time (a real GPU queues launches on one stream the same way); what this
checks is everything around the launches: per-run state, the operand memos, host fallbacks.
"""
import os
import sys
import threading

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("run through tests/cuda/test_cuda.py (needs NUMBA_ENABLE_CUDASIM=1)", allow_module_level=True)

sys.setswitchinterval(5e-5)   # as in sim_cases.py: syncthreads-heavy kernels run much faster

from qrt.kernels.cuda import config  # noqa: E402

config.THREADS = 8
config.MAX_BLOCKS = 3
config.REDUCE_THREADS = 4
config.GEMM_BM = config.GEMM_BN = 4
config.GEMM_BK = 4
config.GEMM_TM = config.GEMM_TN = 2

import qrt  # noqa: E402
from qrt.kernels.cuda import checks  # noqa: E402

# Small models and few runs: the simulator runs every CUDA thread as a Python thread.
THREADS, RUNS = 4, 10


def _feeds(shape_tail, batches=(1, 2)):
    rng = np.random.default_rng(7)
    return [{"x": rng.standard_normal((b, *shape_tail)).astype(np.float32)} for b in batches]


@pytest.mark.parametrize("build, shape_tail", [(lambda: checks.float_cnn(channels=2, size=4)[0], (1, 4, 4)),
                                               (lambda: checks.int8_cnn(channels=2, size=4), (1, 4, 4)),
                                               (checks.int8_mlp, (16,))],
                         ids=["float_cnn", "int8_cnn", "int8_mlp"])
def test_threads_sharing_a_cuda_session_get_the_single_threaded_outputs(build, shape_tail):
    session = qrt.InferenceSession(build().SerializeToString(), providers=["CUDAExecutionProvider"])
    feeds = _feeds(shape_tail)
    expected = [session.run(None, f)[0] for f in feeds]
    mismatches, errors = [], []
    start = threading.Barrier(THREADS)

    def worker(index):
        try:
            start.wait()
            for run in range(RUNS):
                which = (index + run) % len(feeds)
                got = session.run(None, feeds[which])[0]
                if got.shape != expected[which].shape or not np.array_equal(got, expected[which]):
                    mismatches.append((index, run, which))
        except Exception as exc:   # reported below with the thread that raised it
            errors.append((index, repr(exc)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not errors, errors
    assert not mismatches, mismatches
    assert all(getattr(s.kernel, "host_fallbacks", 0) == 0 for s in session._plan.steps)
