"""MatMulNBits at accuracy_level=4: activations quantized to int8 per block, as onnxruntime 1.32 does.

Both runtimes quantize a block of A the same way (scale ``amax / 127``, codes ``rint(a * (127 / amax))``,
MLAS's QuantizeARow_CompInt8), sum a block's integer products exactly and scale the sum in float32; they
differ only in the order of the float32 per-block scaling and of the sum over blocks (<= 11 blocks here,
each term rounded to ~6e-8 relative), measured <= 6.3e-7 of the output scale over bits 2/4/8, blocks
16-128, zero points packed/absent/float, 1-128 rows. So the bound is 2e-6 of the output scale. Where
onnxruntime computes in float32 instead (float zero points, 2-bit blocks of 16) qrt does too, within the
same bound. Hosts without AVX-512 VNNI compute 8 rows and more in float32 (the level allows it), which
differs from onnxruntime's int8 by the activation rounding (~5e-3 of the output scale), bound 2e-2.

The kernels: the ``vpdpbusd`` kernel gives the float-lane int8 kernel's bits (exact integer sums, the same
float epilogue) for every bit width, block, tail and worker count; the float-lane route is run with
QRT_INT8_ISA=avx2 in a subprocess against onnxruntime.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import qrt
from qrt.kernels.cpu import nbits as kernels
from qrt.kernels.cpu.qgemm import ISA

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_nbits as op_tests  # noqa: E402
import test_nbits_kernels as kernel_tests  # noqa: E402

RNG = np.random.default_rng(4004)
VNNI = ISA == "avx512vnni"


@pytest.mark.parametrize("bits,block,zero", [
    (4, 16, "packed"), (4, 32, "packed"), (4, 64, None), (4, 128, "packed"), (4, 32, "float"),
    (8, 16, None), (8, 64, "packed"), (2, 32, "packed"), (2, 16, "packed"), (2, 128, None)])
def test_accuracy_level_4_matches_onnxruntime(bits, block, zero):
    K, N = 333, 70  # K: a partial last block; N: a partial last panel
    model = op_tests._matmul_nbits(K, N, bits, block, zero, bias=True, accuracy_level=4)
    ours = qrt.InferenceSession(model)
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for rows in (1, 2, 3, 9, 40):
        a = {"A": RNG.standard_normal((rows, K)).astype(np.float32)}
        got, want = ours.run(None, a)[0], theirs.run(None, a)[0]
        bound = 2e-6 if rows < 8 or VNNI else 2e-2
        np.testing.assert_allclose(got, want, rtol=0, atol=bound * np.abs(want).max(), err_msg=f"{rows} rows")


@pytest.mark.skipif(not VNNI, reason="needs AVX-512 VNNI")
@pytest.mark.parametrize("bits,block,K,N", [(4, 32, 200, 70), (4, 16, 47, 33), (4, 64, 300, 40), (4, 128, 256, 64),
                                            (2, 16, 90, 33), (2, 64, 129, 20), (8, 16, 100, 31), (8, 128, 250, 40)])
def test_vnni_kernel_gives_the_float_lane_int8_kernels_bits(bits, block, K, N):
    packed, scale, zero, _ = kernel_tests._weights(K, N, bits, block)
    codes, tiled_scale, zero_scale = kernels.tile_weights(packed, scale, zero, N)
    words = kernels.tile_weights_vnni(codes)
    bias = RNG.standard_normal(N).astype(np.float32)
    for rows in (1, 2, 3, 4, 5, 7, 11):
        a = RNG.standard_normal((rows, K)).astype(np.float32)
        want = np.full((rows, N), np.nan, np.float32)
        kernels.matmul_nbits_rows_int8(a, codes, tiled_scale, zero_scale, bits, block, K, bias, want, 1)
        assert np.isfinite(want).all()
        for workers in (1, 2, 5):
            got = np.full((rows, N), np.nan, np.float32)
            kernels.matmul_nbits_rows_vnni(a, words, tiled_scale, zero_scale, bits, block, K, bias, got, workers)
            np.testing.assert_array_equal(got, want, err_msg=f"{rows} rows, {workers} workers")


def test_hosts_without_vnni_take_the_float_lane_int8_kernel():
    script = textwrap.dedent(f"""
        import sys, warnings
        import numpy as np, onnxruntime as ort
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        warnings.simplefilter("ignore")
        import test_nbits as op_tests
        import qrt
        from qrt.kernels.cpu import nbits as kernels
        assert kernels.matmul_nbits_rows_vnni.signatures == []
        model = op_tests._matmul_nbits(333, 70, 4, 32, "packed", bias=True, accuracy_level=4)
        ours = qrt.InferenceSession(model)
        theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        for rows in (1, 3):
            a = {{"A": np.random.default_rng(rows).standard_normal((rows, 333)).astype(np.float32)}}
            got, want = ours.run(None, a)[0], theirs.run(None, a)[0]
            assert np.abs(got - want).max() <= 2e-6 * np.abs(want).max(), rows
        assert kernels.matmul_nbits_rows_vnni.signatures == []
        assert kernels.matmul_nbits_rows_int8.signatures
        print("ok")
    """)
    env = dict(os.environ, QRT_INT8_ISA="avx2")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


@pytest.mark.skipif(not VNNI, reason="needs AVX-512 VNNI")
def test_an_op_at_level_4_keeps_one_layout_and_its_twin_can_rebuild_the_other():
    """At accuracy_level 4 on a VNNI host the op keeps only the VNNI words (no second copy of the weights);
    the CUDA twin, which reads tile_weights' layout, rebuilds it from them."""
    from qrt.ops.nbits import MatMulNBits
    model = op_tests._matmul_nbits(200, 70, 4, 32, "packed", accuracy_level=4)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    op = MatMulNBits(K=200, N=70, bits=4, block_size=32, accuracy_level=4)
    op.node_name = "mm"
    op.prepare([None, inits["B"], inits["S"], inits["Z"]])
    codes, scale, zero_scale, words, int8 = op._weights.get((inits["B"], inits["S"], inits["Z"]))
    assert codes is None and int8
    zero = kernels.unpack_zero_points(inits["Z"], 70, 7, 4)
    want = kernels.tile_weights(inits["B"].reshape(70, 7, 16), inits["S"].reshape(70, 7), zero, 70)
    np.testing.assert_array_equal(kernels.untile_weights_vnni(words), want[0])
    np.testing.assert_array_equal(scale, want[1])
