"""A prepared QGemm binds its product once per row count (qgemm.matmul_runner): few uint8 rows
run the VNNI rows directly, even where AMX tiles would take the layer, and agree exactly with the
unbound driver; other cases (int8 rows, many rows on AMX) keep the unbound driver."""
import numpy as np
import pytest

from int8_helpers import assert_within_one_step, node_model, random_q, run_ort, stable_seed
import qrt
from qrt.kernels.cpu import qgemm as kgemm

MS = "com.microsoft"
F32 = np.float32


def _model(K, N, a_dt, rng, a):
    consts = dict(a_s=np.array(0.0173, F32), a_z=np.array(5, a_dt), b=random_q(rng, (N, K), np.int8),
                  b_s=rng.uniform(0.002, 0.01, N).astype(F32), b_z=np.zeros(N, np.int8),
                  c=rng.integers(-2000, 2000, N).astype(np.int32), y_s=np.array(0.0377, F32),
                  y_z=np.array(3, a_dt))
    return node_model("QGemm", dict(a=a), consts, [("y", a_dt, 2)], attrs=dict(transB=1), domain=MS,
                      input_order=["a", "a_s", "a_z", "b", "b_s", "b_z", "c", "y_s", "y_z"])


@pytest.mark.parametrize("M,K,a_dt,bound", [
    (1, 256, np.uint8, True),      # the digits CNN's first QGemm: AMX-sized depth, one row
    (3, 64, np.uint8, True),
    (3, 45, np.uint8, False),      # a depth the packing pads: rows are copied first
    (1, 256, np.int8, False),      # int8 rows are flipped into a copy first
    (37, 256, np.uint8, None),     # many rows: AMX where the host has it, else bound
])
def test_bound_qgemm_matches_unbound_driver_and_onnxruntime(M, K, a_dt, bound, monkeypatch):
    rng = np.random.default_rng(stable_seed("small_qgemm", M, K, np.dtype(a_dt).name))
    N = 32
    a = random_q(rng, (M, K), a_dt)
    model = _model(K, N, a_dt, rng, a)
    session = qrt.InferenceSession(model.SerializeToString())
    calls = []
    original = kgemm.matmul
    monkeypatch.setattr(kgemm, "matmul", lambda *args: (calls.append(1), original(*args))[1])
    got = session.run(None, dict(a=a))[0]
    if bound is None:
        from qrt.kernels.cpu import qgemm_amx
        bound = not qgemm_amx.AVAILABLE or kgemm.ISA != "avx512vnni"
    assert (not calls) == bound
    monkeypatch.undo()
    # The unbound driver on a fresh session: a different path to the same integers.
    monkeypatch.setattr(kgemm, "matmul_runner", lambda M, K, flip, za, packed, epi:
                        lambda x, out: original(x, flip, za, packed, epi, out))
    unbound = qrt.InferenceSession(model.SerializeToString()).run(None, dict(a=a))[0]
    np.testing.assert_array_equal(got, unbound)
    assert_within_one_step(got, run_ort(model, dict(a=a))[0], max_fraction=0.01)
