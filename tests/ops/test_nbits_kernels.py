"""MatMulNBits kernels (qrt/kernels/cpu/nbits.py) beyond the op-level checks of test_nbits.py.

Both CPU paths, streaming (few rows) and dequantized panels (the 8/4/2/1-row
micro-kernels), at every row count that exercises a different micro-kernel mix, with N not a multiple
of the 32-column panel and K not a multiple of the block. Reference: the weight dequantized in float64
by numpy, ``a @ W + bias``; float32 sums of K <= 300 products of magnitude ~1 in any order stay within
1e-5 of the output scale (measured ~1e-6), so that is the bound. Also run with Numba compiling for a
plain x86-64 (no AVX, no FMA) in a subprocess: the micro-kernels use portable LLVM vector types only,
and CI machines may lack AVX-512.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from qrt.kernels.cpu import nbits as kernels

RNG = np.random.default_rng(1717)


def _weights(K, N, bits, block):
    kb = -(-K // block)
    per_byte = 8 // bits
    q = RNG.integers(0, 2 ** bits, (N, kb * block))
    packed = sum(q.reshape(N, -1, per_byte)[..., f].astype(np.uint8) << (bits * f)
                 for f in range(per_byte)).astype(np.uint8).reshape(N, kb, block // per_byte)
    scale = (RNG.random((N, kb)) * 0.1 + 0.01).astype(np.float32)
    zero = RNG.integers(0, 2 ** bits, (N, kb)).astype(np.float32)
    w = (q - np.repeat(zero, block, axis=1)) * np.repeat(scale, block, axis=1).astype(np.float64)
    return packed, scale, zero, w[:, :K].T


def _run(kernel, a, packed, scale, zero, bits, block, bias, workers=2):
    K, N = a.shape[1], packed.shape[0]
    codes, tiled_scale, zero_scale = kernels.tile_weights(packed, scale, zero, N)
    out = np.full((a.shape[0], N), np.nan, np.float32)
    kernel(a, codes, tiled_scale, zero_scale, bits, block, K, bias, out, workers)
    return out


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 9, 13, 15, 17])
@pytest.mark.parametrize("bits,block,K,N", [(4, 32, 200, 70), (2, 16, 90, 33), (8, 64, 300, 40), (4, 128, 256, 32)])
def test_streaming_and_panel_kernels_match_the_dequantized_product(rows, bits, block, K, N):
    packed, scale, zero, w = _weights(K, N, bits, block)
    a = RNG.standard_normal((rows, K)).astype(np.float32)
    bias = RNG.standard_normal(N).astype(np.float32)
    want = a.astype(np.float64) @ w + bias
    for kernel in (kernels.matmul_nbits_rows, kernels.matmul_nbits_panels):
        got = _run(kernel, a, packed, scale, zero, bits, block, bias)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max(), err_msg=kernel.__name__)


def test_panel_kernel_splits_many_rows_into_chunks_that_fit_l2():
    """500 rows of K=1100 (1152 padded) exceed PANEL_A_BYTES of packed A, so rows go in two chunks."""
    K, N, bits, block = 1100, 40, 4, 64
    assert 500 * 4 * 1152 > kernels.PANEL_A_BYTES
    packed, scale, zero, w = _weights(K, N, bits, block)
    a = RNG.standard_normal((500, K)).astype(np.float32)
    bias = RNG.standard_normal(N).astype(np.float32)
    want = a.astype(np.float64) @ w + bias
    got = _run(kernels.matmul_nbits_panels, a, packed, scale, zero, bits, block, bias)
    # 1100 terms: float32 rounding grows like sqrt(K), still ~1e-6 of the output scale
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_int8_kernel_is_exact_integer_dot_products_per_block(bits):
    """accuracy_level=4: ``sum_blk scale * a_scale * (sum_k q_k * qa_k - zero * sum_k qa_k)``, the int8
    activations being :func:`quantize_rows_int8`'s. The kernel sums a block's integer products exactly (in
    float32 lanes, below 2 ** 24); only the float32 rounding of the per-block scaling differs."""
    K, N, block = 160, 45, 32
    packed, scale, zero, _ = _weights(K, N, bits, block)
    a = RNG.standard_normal((3, K)).astype(np.float32)
    kb = K // block
    qa, a_scale, _ = kernels.quantize_rows_int8(a, K, block, kb)
    per_byte = 8 // bits
    q = np.stack([(packed >> (bits * f)) & (2 ** bits - 1) for f in range(per_byte)], -1).reshape(N, kb, block)
    dots = np.einsum("nbk,mbk->mnb", q.astype(np.int64), qa.reshape(3, kb, block).astype(np.int64))
    sums = qa.reshape(3, kb, block).astype(np.int64).sum(-1)
    want = np.einsum("mnb,nb,mb->mn", dots - zero[None] * sums[:, None], scale.astype(np.float64), a_scale)
    got = _run(kernels.matmul_nbits_rows_int8, a, packed, scale, zero, bits, block, np.zeros(N, np.float32))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("name,rows", [("matmul_nbits_rows", 3), ("matmul_nbits_rows_int8", 2),
                                       ("matmul_nbits_panels", 21)])
def test_results_do_not_depend_on_how_many_workers_claim_the_tasks(name, rows):
    """Workers claim whole panels (and 8-row groups of A to pack), each computed the same way whoever claims
    it: 1 worker, 2, or more workers than the 3 panels give the same bits."""
    kernel = getattr(kernels, name)
    packed, scale, zero, _ = _weights(200, 70, 4, 32)
    a = RNG.standard_normal((rows, 200)).astype(np.float32)
    bias = RNG.standard_normal(70).astype(np.float32)
    one = _run(kernel, a, packed, scale, zero, 4, 32, bias, workers=1)
    assert np.isfinite(one).all()
    for workers in (2, 7):
        np.testing.assert_array_equal(_run(kernel, a, packed, scale, zero, 4, 32, bias, workers=workers), one)


def test_kernels_compiled_for_plain_x86_64_match(tmp_path):
    script = textwrap.dedent(f"""
        import numpy as np, sys
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import test_nbits_kernels as t
        from qrt.kernels.cpu import nbits as kernels
        packed, scale, zero, w = t._weights(200, 70, 4, 32)
        a = np.random.default_rng(0).standard_normal((10, 200)).astype(np.float32)
        want = a.astype(np.float64) @ w
        bias = np.zeros(70, np.float32)
        for kernel, rows in ((kernels.matmul_nbits_rows, 3), (kernels.matmul_nbits_panels, 10)):
            got = t._run(kernel, a[:rows], packed, scale, zero, 4, 32, bias)
            err = np.abs(got - want[:rows]).max() / np.abs(want).max()
            assert err < 1e-5, (kernel.__name__, err)
        asm = "".join(kernels.matmul_nbits_panels.inspect_asm().values())
        # really compiled for the baseline: SSE vectors, nothing wider
        assert "xmm" in asm and "ymm" not in asm and "zmm" not in asm
        print("ok")
    """)
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(tmp_path),
               QRT_INT8_ISA="generic")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]

