"""Exact integer matrix products with fused requantization, for every int8 op that multiplies.

One canonical form serves QLinearMatMul, MatMulInteger, QGemm, MatMulIntegerToFloat,
DynamicQuantizeMatMul, QLinearConv and ConvInteger:

    acc[m, n] = sum_k (a[m, k] - za[m]) * (b[k, n] - zb[n])          (int32, never saturated)

with ``a`` unsigned and ``b`` signed bytes. int8 activations become uint8 by flipping the sign bit
(``a ^ 0x80 == a + 128``) and their zero point moves with them; uint8 weights become int8 the same
way (``b ^ 0x80 == b - 128``). The micro-kernel computes ``raw = sum_k a * b`` and the epilogue adds
the zero-point terms, which need only row sums of ``a`` (when ``zb != 0``) and column sums of ``b``
(computed once, when the weights are packed):

    acc = raw + bias[n] - za[m] * colsum[n] - zb[n] * (rowsum[m] - K * za[m])

Everything wraps modulo 2**32 exactly as int32 arithmetic does, so the result is the spec's int32
product whatever the order of the terms. The epilogue then writes, per output element, one of

* mode 0, int32: ``acc`` (MatMulInteger, ConvInteger);
* mode 1, requantized: ``saturate(rint(float64(acc) * mult[n]) + zy)`` with ``mult`` the float32
  ``a_scale * b_scale / y_scale`` of the reference implementation, stored as the output's bit
  pattern into a uint8 view (one compiled kernel for int8 and uint8 outputs);
* mode 2, float: ``float32(acc) * fscale[n] + fbias[n]`` (MatMulIntegerToFloat, QGemm without
  ``y_scale``).

Weights are packed once into panels of ``NR`` columns, each panel ``[K/4][NR][4]`` bytes, so that
one vector load brings 4 consecutive k of NR columns. The micro-kernels, by host ISA:

* ``avx512vnni``: ``vpdpbusd`` on zmm registers (64 exact u8 x s8 multiply-adds per instruction;
  unlike ``vpmaddubsw`` it has no int16 intermediate that could saturate), 8 x 32 tiles;
* ``avx2``: bytes widened to int16 in registers, ``vpmaddwd`` on ymm registers, 6 x 8 tiles;
* ``generic``: plain Numba loops over the same layout, for any other CPU.

The first two are written as LLVM IR through ``numba.extending.intrinsic`` because LLVM does not
derive either instruction from scalar Numba code with the operands register-blocked. So is the
requantizing epilogue (:func:`_requant_rows`): whole rows of a tile as 16-lane vectors with masked
tails, the float64 steps unchanged (a Numba loop over a row cost about 2 cycles an element, the
whole time of a shallow convolution). The kernel
for a process is chosen once from the CPU features Numba compiles for (the host's, or
NUMBA_CPU_FEATURES when that is set) into :data:`ISA`; every driver takes a
zero-length ``tag`` array whose dtype names the ISA, so each ISA's driver is a separate cached
specialization and an instruction the host lacks is never compiled.
"""
from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from .threads import launcher, num_threads, serial_twin

# --------------------------------------------------------------------------- ISA choice


def _target_features() -> dict:
    """The CPU features Numba compiles for: NUMBA_CPU_FEATURES when set, else the host's."""
    import numba
    if numba.config.CPU_FEATURES is not None:
        return {f[1:]: f[0] == "+" for f in numba.config.CPU_FEATURES.split(",") if f[:1] in "+-" and len(f) > 1}
    import llvmlite.binding as llvm
    try:
        return dict(llvm.get_host_cpu_features())
    except RuntimeError:
        return {}


def _host_isa() -> str:
    features = _target_features()
    if features.get("avx512vnni") and features.get("avx512bw") and features.get("avx512f"):
        return "avx512vnni"
    if features.get("avx2"):
        return "avx2"
    return "generic"


# Override with QRT_INT8_ISA=avx2|generic to test a path on a machine that supports more.
ISA = os.environ.get("QRT_INT8_ISA") or _host_isa()

#  isa: (tag dtype, NR columns per panel, MR rows of the largest micro-kernel)
GEOMETRY = {
    "avx512vnni": (np.int8, 32, 8),
    "avx2": (np.int16, 8, 6),
    "generic": (np.int32, 16, 4),
}
_MR_MAX = max(g[2] for g in GEOMETRY.values())


def tag_for(isa: str) -> np.ndarray:
    return np.zeros(0, GEOMETRY[isa][0])


def panel_width(isa: str) -> int:
    return GEOMETRY[isa][1]


# --------------------------------------------------------------------------- micro-kernels in LLVM IR

_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)


def _const(value, ty=_I64):
    return ir.Constant(ty, value)


def _k_loop(builder, k4, accs0, step):
    """Emits ``for kk in range(k4): accs = step(kk, accs)``; returns the final accumulators."""
    entry = builder.block
    loop = builder.append_basic_block("qgemm_k")
    done = builder.append_basic_block("qgemm_k_done")
    builder.cbranch(builder.icmp_signed(">", k4, _const(0)), loop, done)
    builder.position_at_end(loop)
    kk = builder.phi(_I64)
    kk.add_incoming(_const(0), entry)
    phis = []
    for acc in accs0:
        phi = builder.phi(acc.type)
        phi.add_incoming(acc, entry)
        phis.append(phi)
    new = step(kk, phis)
    body_end = builder.block
    kk_next = builder.add(kk, _const(1))
    kk.add_incoming(kk_next, body_end)
    for phi, value in zip(phis, new):
        phi.add_incoming(value, body_end)
    builder.cbranch(builder.icmp_signed("<", kk_next, k4), loop, done)
    builder.position_at_end(done)
    final = []
    for acc, value in zip(accs0, new):
        phi = builder.phi(acc.type)
        phi.add_incoming(acc, entry)
        phi.add_incoming(value, body_end)
        final.append(phi)
    return final


def _load(builder, base, byte_offset, ty):
    ptr = builder.bitcast(builder.gep(base, [byte_offset]), ty.as_pointer())
    return builder.load(ptr, align=1)


def _emit_vnni(builder, a_ptr, lda, b_ptr, koff_ptr, k4, tile_ptr, mr):
    nr, nvec = 32, 2
    v16 = ir.VectorType(_I32, 16)
    v64 = ir.VectorType(_I8, 64)
    dpbusd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v16, [v16, v64, v64]),
                                            "llvm.x86.avx512.vpdpbusd.512")
    zero = ir.Constant(v16, None)
    row_offsets = [builder.mul(_const(i), lda) for i in range(mr)]

    def step(kk, accs):
        b_row = builder.mul(kk, _const(nr * 4))
        bvecs = [_load(builder, b_ptr, builder.add(b_row, _const(64 * j)), v64) for j in range(nvec)]
        k_off = builder.load(builder.gep(koff_ptr, [kk]), align=8)
        out = []
        for i in range(mr):
            a = _load(builder, a_ptr, builder.add(row_offsets[i], k_off), _I32)
            splat = builder.insert_element(ir.Constant(v16, ir.Undefined), a, _const(0, _I32))
            splat = builder.shuffle_vector(splat, ir.Constant(v16, ir.Undefined), ir.Constant(v16, None))
            splat = builder.bitcast(splat, v64)
            for j in range(nvec):
                out.append(builder.call(dpbusd, [accs[i * nvec + j], splat, bvecs[j]]))
        return out

    accs = _k_loop(builder, k4, [zero] * (mr * nvec), step)
    tile = builder.bitcast(tile_ptr, v16.as_pointer())
    for i in range(mr):
        for j in range(nvec):
            builder.store(accs[i * nvec + j], builder.gep(tile, [_const(i * nvec + j)]), align=4)


def _emit_avx2(builder, a_ptr, lda, b_ptr, koff_ptr, k4, tile_ptr, mr):
    nr = 8
    v8 = ir.VectorType(_I32, 8)
    w16 = ir.VectorType(_I16, 16)
    b32 = ir.VectorType(_I8, 32)
    pmaddwd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8, [w16, w16]),
                                             "llvm.x86.avx2.pmadd.wd")
    zero = ir.Constant(v8, None)
    row_offsets = [builder.mul(_const(i), lda) for i in range(mr)]
    lo_mask = ir.Constant(ir.VectorType(_I32, 16), [ir.Constant(_I32, i) for i in range(16)])
    hi_mask = ir.Constant(ir.VectorType(_I32, 16), [ir.Constant(_I32, 16 + i) for i in range(16)])
    splat4 = ir.Constant(ir.VectorType(_I32, 16), [ir.Constant(_I32, i % 4) for i in range(16)])

    def step(kk, accs):
        b = _load(builder, b_ptr, builder.mul(kk, _const(nr * 4)), b32)
        # Columns 0-3 and 4-7, four k each, sign-extended to int16 in registers.
        b_lo = builder.sext(builder.shuffle_vector(b, ir.Constant(b32, ir.Undefined), lo_mask), w16)
        b_hi = builder.sext(builder.shuffle_vector(b, ir.Constant(b32, ir.Undefined), hi_mask), w16)
        out = []
        v4 = ir.VectorType(_I8, 4)
        k_off = builder.load(builder.gep(koff_ptr, [kk]), align=8)
        for i in range(mr):
            a = _load(builder, a_ptr, builder.add(row_offsets[i], k_off), v4)
            a = builder.zext(a, ir.VectorType(_I16, 4))
            a = builder.shuffle_vector(a, ir.Constant(ir.VectorType(_I16, 4), ir.Undefined), splat4)
            out.append(builder.add(accs[2 * i], builder.call(pmaddwd, [a, b_lo])))
            out.append(builder.add(accs[2 * i + 1], builder.call(pmaddwd, [a, b_hi])))
        return out

    accs = _k_loop(builder, k4, [zero] * (2 * mr), step)
    # Each accumulator holds two partial sums per column (k0+k1, k2+k3); add the pairs.
    evens = ir.Constant(ir.VectorType(_I32, 8), [ir.Constant(_I32, 2 * i) for i in range(8)])
    odds = ir.Constant(ir.VectorType(_I32, 8), [ir.Constant(_I32, 2 * i + 1) for i in range(8)])
    tile = builder.bitcast(tile_ptr, v8.as_pointer())
    for i in range(mr):
        lo, hi = accs[2 * i], accs[2 * i + 1]
        total = builder.add(builder.shuffle_vector(lo, hi, evens), builder.shuffle_vector(lo, hi, odds))
        builder.store(total, builder.gep(tile, [_const(i)]), align=4)


def _make_microkernel(emit, mr):
    @intrinsic
    def microkernel(typingctx, a, a_off, lda, bp, b_off, koff, k4, tile):
        sig = types.void(a, a_off, lda, bp, b_off, koff, k4, tile)

        def codegen(context, builder, signature, args):
            a_v, a_off_v, lda_v, bp_v, b_off_v, koff_v, k4_v, tile_v = args
            a_arr = context.make_array(signature.args[0])(context, builder, a_v)
            b_arr = context.make_array(signature.args[3])(context, builder, bp_v)
            k_arr = context.make_array(signature.args[5])(context, builder, koff_v)
            t_arr = context.make_array(signature.args[7])(context, builder, tile_v)
            a_ptr = builder.gep(builder.bitcast(a_arr.data, _I8.as_pointer()), [a_off_v])
            b_ptr = builder.gep(builder.bitcast(b_arr.data, _I8.as_pointer()), [b_off_v])
            emit(builder, a_ptr, lda_v, b_ptr, builder.bitcast(k_arr.data, _I64.as_pointer()), k4_v,
                 builder.bitcast(t_arr.data, _I32.as_pointer()), mr)
            return context.get_dummy_value()

        return sig, codegen

    return microkernel


_mk_vnni = {mr: _make_microkernel(_emit_vnni, mr) for mr in (8, 4, 2, 1)}
_mk_avx2 = {mr: _make_microkernel(_emit_avx2, mr) for mr in (6, 4, 2, 1)}
_vnni8, _vnni4, _vnni2, _vnni1 = (_mk_vnni[m] for m in (8, 4, 2, 1))
_avx2_6, _avx2_4, _avx2_2, _avx2_1 = (_mk_avx2[m] for m in (6, 4, 2, 1))


@njit(cache=True, inline="always")
def _mk_generic(a, a_off, lda, bp, b_off, koff, k4, tile, mr):
    nr = 16
    for i in range(mr):
        row = a_off + i * lda
        acc = tile[i]
        for j in range(nr):
            acc[j] = 0
        for kk in range(k4):
            src = row + koff[kk]
            a0 = np.int32(a[src])
            a1 = np.int32(a[src + 1])
            a2 = np.int32(a[src + 2])
            a3 = np.int32(a[src + 3])
            bk = bp[b_off + kk * nr * 4:b_off + (kk + 1) * nr * 4]
            for j in range(nr):
                acc[j] += (a0 * np.int32(bk[4 * j]) + a1 * np.int32(bk[4 * j + 1]) + a2 * np.int32(bk[4 * j + 2])
                           + a3 * np.int32(bk[4 * j + 3]))


def microkernel(tag, a, a_off, lda, bp, b_off, koff, k4, tile, rows):
    """Raw products of up to ``rows`` rows into ``tile``; returns how many rows it did.

    Row i, step kk reads the 4 bytes at ``a[a_off + i * lda + koff[kk]]``: ``koff`` is
    ``4 * kk`` for a plain matrix and the receptive-field offsets for an implicit convolution.
    """
    raise TypeError("microkernel is only callable from Numba code")


@overload(microkernel, inline="always")
def _microkernel_impl(tag, a, a_off, lda, bp, b_off, koff, k4, tile, rows):
    dtype = tag.dtype
    if dtype == types.int8:
        def impl(tag, a, a_off, lda, bp, b_off, koff, k4, tile, rows):
            if rows >= 8:
                _vnni8(a, a_off, lda, bp, b_off, koff, k4, tile)
                return 8
            if rows >= 4:
                _vnni4(a, a_off, lda, bp, b_off, koff, k4, tile)
                return 4
            if rows >= 2:
                _vnni2(a, a_off, lda, bp, b_off, koff, k4, tile)
                return 2
            _vnni1(a, a_off, lda, bp, b_off, koff, k4, tile)
            return 1
        return impl
    if dtype == types.int16:
        def impl(tag, a, a_off, lda, bp, b_off, koff, k4, tile, rows):
            if rows >= 6:
                _avx2_6(a, a_off, lda, bp, b_off, koff, k4, tile)
                return 6
            if rows >= 4:
                _avx2_4(a, a_off, lda, bp, b_off, koff, k4, tile)
                return 4
            if rows >= 2:
                _avx2_2(a, a_off, lda, bp, b_off, koff, k4, tile)
                return 2
            _avx2_1(a, a_off, lda, bp, b_off, koff, k4, tile)
            return 1
        return impl

    def impl(tag, a, a_off, lda, bp, b_off, koff, k4, tile, rows):
        mr = 4 if rows >= 4 else rows
        _mk_generic(a, a_off, lda, bp, b_off, koff, k4, tile, mr)
        return mr
    return impl


# --------------------------------------------------------------------------- epilogue

_F64 = ir.DoubleType()
_LANES = 16          # int32 lanes of one zmm; a tile row of up to 32 columns is two of them


def _emit_requant_rows(builder, tile_ptr, ldt, rows, cols, za_ptr, rt_ptr, cs_ptr, czb_ptr, cb_ptr, mult_ptr,
                       zy, qmin, qmax, out_ptr, ldo):
    """Mode 1 of :func:`_epilogue` for ``rows`` rows of up to 32 columns, as whole vectors.

    The same operations as :func:`_requantize_row` in the same order (int32 wrapping sums; float64
    product, round half to even, zero point, clamp; low byte), so the bytes are identical. Columns
    past ``cols`` are masked off on every load and store: the column arrays and the output end there.
    ``rows`` is at least 1 (the first row's zero point is read up front).
    """
    v16 = ir.VectorType(_I32, _LANES)
    d16 = ir.VectorType(_F64, _LANES)
    b16 = ir.VectorType(_I8, _LANES)
    m16 = ir.VectorType(ir.IntType(1), _LANES)
    module = builder.module

    def overloaded(vec):
        """The suffix naming an intrinsic's vector and pointer types (typed or opaque pointers)."""
        name = f"v{_LANES}{'f64' if vec.element == _F64 else f'i{vec.element.width}'}"
        return f"{name}.p0" if str(vec.as_pointer()) == "ptr" else f"{name}.p0{name}"

    def masked_load(ty, ptr, offset, mask):
        fn = cgutils.get_or_insert_function(module, ir.FunctionType(ty, [ty.as_pointer(), _I32, m16, ty]),
                                            f"llvm.masked.load.{overloaded(ty)}")
        at = builder.bitcast(builder.gep(ptr, [offset]), ty.as_pointer())
        return builder.call(fn, [at, ir.Constant(_I32, 4), mask, ir.Constant(ty, None)])

    store = cgutils.get_or_insert_function(module, ir.FunctionType(ir.VoidType(), [b16, b16.as_pointer(), _I32, m16]),
                                           f"llvm.masked.store.{overloaded(b16)}")

    def splat(value, ty):
        vec = builder.insert_element(ir.Constant(ty, ir.Undefined), value, ir.Constant(_I32, 0))
        return builder.shuffle_vector(vec, ir.Constant(ty, ir.Undefined), ir.Constant(v16, None))

    iota = [ir.Constant(v16, [ir.Constant(_I32, h * _LANES + i) for i in range(_LANES)]) for h in range(2)]
    cols_v = splat(builder.trunc(cols, _I32), v16)
    # Every row of a convolution has the same zero point, and the row-sum term is zero unless a
    # weight zero point is not: ``bias - za0 * colsum`` is formed once, and a row only multiplies
    # when its zero point differs from the first row's or its row term is not zero (int32 sums wrap,
    # so both forms are the same integer).
    za0 = builder.load(za_ptr)
    za0_v = splat(za0, v16)
    halves = []
    for h in range(2):
        mask = builder.icmp_signed("<", iota[h], cols_v)
        offset = _const(h * _LANES)
        cs = masked_load(v16, cs_ptr, offset, mask)
        base = builder.sub(masked_load(v16, cb_ptr, offset, mask), builder.mul(za0_v, cs))
        halves.append((mask, cs, masked_load(v16, czb_ptr, offset, mask), base,
                       masked_load(d16, mult_ptr, offset, mask)))
    # rint(p) + zy clamped to [qmin, qmax] is rint(p') + zy clamped, p' = p clamped to
    # [qmin - zy - 1, qmax - zy + 1] (rint is monotonic and keeps those integers), and for |p'| < 2**51
    # the low 32 bits of p' + 1.5 * 2**52 are rint(p') (the sum rounds to an integer, half to even):
    # one add and a shuffle instead of a rounding and two conversions.
    zy_i = builder.trunc(zy, _I32)
    zy_v = splat(zy_i, v16)
    lo_i = splat(builder.trunc(qmin, _I32), v16)
    hi_i = splat(builder.trunc(qmax, _I32), v16)
    lo_v = splat(builder.sitofp(builder.sub(builder.sub(qmin, zy), _const(1)), _F64), d16)
    hi_v = splat(builder.sitofp(builder.add(builder.sub(qmax, zy), _const(1)), _F64), d16)
    magic = ir.Constant(d16, [ir.Constant(_F64, 1.5 * 2.0 ** 52)] * _LANES)
    low_words = ir.Constant(v16, [ir.Constant(_I32, 2 * i) for i in range(_LANES)])
    words = ir.VectorType(_I32, 2 * _LANES)
    two = builder.icmp_signed(">", cols, _const(_LANES))

    entry = builder.block
    loop = builder.append_basic_block("requant_row")
    latch = builder.append_basic_block("requant_next")
    done = builder.append_basic_block("requant_done")
    builder.cbranch(builder.icmp_signed(">", rows, _const(0)), loop, done)
    builder.position_at_end(loop)
    i = builder.phi(_I64)
    i.add_incoming(_const(0), entry)
    za = builder.load(builder.gep(za_ptr, [i]))
    rt = builder.load(builder.gep(rt_ptr, [i]))
    src_row = builder.mul(i, ldt)
    dst_row = builder.gep(out_ptr, [builder.mul(i, ldo)])
    plain = builder.and_(builder.icmp_signed("==", za, za0), builder.icmp_signed("==", rt, ir.Constant(_I32, 0)))

    def half(h, adjusted):
        mask, cs, czb, base, mult = halves[h]
        acc = builder.add(masked_load(v16, tile_ptr, builder.add(src_row, _const(h * _LANES)), mask), base)
        if adjusted:
            acc = builder.sub(builder.sub(acc, builder.mul(splat(builder.sub(za, za0), v16), cs)),
                              builder.mul(czb, splat(rt, v16)))
        p = builder.fmul(builder.sitofp(acc, d16), mult)
        p = builder.select(builder.fcmp_ordered("<", p, lo_v), lo_v, p)
        p = builder.select(builder.fcmp_ordered(">", p, hi_v), hi_v, p)
        bits = builder.bitcast(builder.fadd(p, magic), words)
        r = builder.add(builder.shuffle_vector(bits, ir.Constant(words, ir.Undefined), low_words), zy_v)
        r = builder.select(builder.icmp_signed("<", r, lo_i), lo_i, r)
        r = builder.select(builder.icmp_signed(">", r, hi_i), hi_i, r)
        byte = builder.trunc(r, b16)
        at = builder.bitcast(builder.gep(dst_row, [_const(h * _LANES)]), b16.as_pointer())
        builder.call(store, [byte, at, ir.Constant(_I32, 1), mask])

    branches = []
    for adjusted in (False, True):
        first = builder.append_basic_block("requant_adjusted" if adjusted else "requant_plain")
        second = builder.append_basic_block("requant_second_half")
        branches.append(first)
        builder.position_at_end(first)
        half(0, adjusted)
        builder.cbranch(two, second, latch)
        builder.position_at_end(second)
        half(1, adjusted)
        builder.branch(latch)
    builder.position_at_end(loop)
    builder.cbranch(plain, branches[0], branches[1])
    builder.position_at_end(latch)
    i_next = builder.add(i, _const(1))
    i.add_incoming(i_next, latch)
    builder.cbranch(builder.icmp_signed("<", i_next, rows), loop, done)
    builder.position_at_end(done)


@intrinsic
def _requant_rows(typingctx, tile, t_off, rows, cols, row_za, row_t, r0, cs, czb, cbias, mult, zy, qmin, qmax,
                  out, o_off, ldo):
    """Requantizes ``rows`` rows of ``tile`` (from flat element ``t_off``, rows ``tile.shape[1]``
    apart) into ``out`` from flat byte ``o_off``, rows ``ldo`` bytes apart (:func:`_emit_requant_rows`).
    Every array must be contiguous along the columns it is read at."""
    sig = types.void(tile, t_off, rows, cols, row_za, row_t, r0, cs, czb, cbias, mult, zy, qmin, qmax, out, o_off,
                     ldo)

    def codegen(context, builder, signature, args):
        (tile_v, t_off_v, rows_v, cols_v, za_v, rt_v, r0_v, cs_v, czb_v, cb_v, mult_v, zy_v, qmin_v, qmax_v,
         out_v, o_off_v, ldo_v) = args
        ty = signature.args

        def data(index, value, elem):
            arr = context.make_array(ty[index])(context, builder, value)
            return builder.bitcast(arr.data, elem.as_pointer())

        tile_arr = context.make_array(ty[0])(context, builder, tile_v)
        ldt = builder.extract_value(tile_arr.shape, 1)
        ints = [context.cast(builder, v, t, types.int64) for v, t in
                ((t_off_v, ty[1]), (rows_v, ty[2]), (cols_v, ty[3]), (r0_v, ty[6]), (zy_v, ty[11]),
                 (qmin_v, ty[12]), (qmax_v, ty[13]), (o_off_v, ty[15]), (ldo_v, ty[16]))]
        t_off_i, rows_i, cols_i, r0_i, zy_i, qmin_i, qmax_i, o_off_i, ldo_i = ints
        _emit_requant_rows(builder, builder.gep(data(0, tile_v, _I32), [t_off_i]), ldt, rows_i, cols_i,
                           builder.gep(data(4, za_v, _I32), [r0_i]), builder.gep(data(5, rt_v, _I32), [r0_i]),
                           data(7, cs_v, _I32), data(8, czb_v, _I32), data(9, cb_v, _I32), data(10, mult_v, _F64),
                           zy_i, qmin_i, qmax_i, builder.gep(data(14, out_v, _I8), [o_off_i]), ldo_i)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def _requantize(acc, mult, zy, qmin, qmax):
    # min/max rather than branches, so the column loop vectorizes (vrndscalepd, vminpd, vmaxpd).
    v = min(max(np.rint(np.float64(acc) * mult) + zy, np.float64(qmin)), np.float64(qmax))
    return np.uint8(np.int32(v) & 255)


# int64 arithmetic truncated to int32 in the row helpers: the spec's wrapping int32 result in any term order.
@njit(cache=True, inline="always")
def _requantize_row(dst, src, cols, za, rt, cs, czb, cbias, mult, zy, qmin, qmax):
    for j in range(cols):
        dst[j] = _requantize(np.int32(src[j] + cbias[j] - za * cs[j] - czb[j] * rt), mult[j], zy, qmin, qmax)


@njit(cache=True, inline="always")
def _int32_row(dst, src, cols, za, rt, cs, czb, cbias):
    for j in range(cols):
        dst[j] = np.int32(src[j] + cbias[j] - za * cs[j] - czb[j] * rt)


@njit(cache=True, inline="always")
def _float_row(dst, src, cols, za, rt, cs, czb, cbias, fscale, fbias):
    for j in range(cols):
        dst[j] = np.float32(np.int32(src[j] + cbias[j] - za * cs[j] - czb[j] * rt)) * fscale[j] + fbias[j]


@njit(cache=True, inline="always")
def _epilogue(tile, rows, cols, row_za, row_t, r0, cs, czb, cbias, mode, mult, zy, qmin, qmax, fscale, fbias,
              out_q, out_i, out_f, trans, m0, c0, stage_q, stage_i, stage_f):
    """Zero-point terms and output conversion for one tile (``tile`` is (MR, nr) int32).

    The column arrays (``cs`` column sums, ``czb`` zero points, ``cbias``, ``mult``, ``fscale``,
    ``fbias``) arrive sliced to this tile's columns, so every index is a loop counter from 0 and the
    column loop vectorizes with plain loads (an index LLVM cannot prove non-negative gets Numba's
    wrap-around select, which turns the loads into gathers). ``r0`` indexes the row arrays. Writes
    ``out[m0 + i, c0 + j]``, or with ``trans`` ``out[c0 + j, m0 + i]`` (channels-first convolution
    output) through the (MR, nr) ``stage_*`` buffer, so only the final moves are transposed.
    """
    # One branch per call, each with its own row loop: tested per row, the mode and layout kept LLVM
    # from simplifying the loop (6 cycles an element for a 32 x 32 tile, 2 with the loops split).
    # Each destination is its own call: a row of a staging tile and a row of the output differ in
    # layout, and one variable holding either would make every store strided (no vectors).
    if not trans:
        if mode == 1 and out_q.strides[1] == 1:
            _requant_rows(tile, 0, rows, cols, row_za, row_t, r0, cs, czb, cbias, mult, zy, qmin, qmax, out_q,
                          m0 * out_q.strides[0] + c0, out_q.strides[0])
        elif mode == 1:
            for i in range(rows):
                _requantize_row(out_q[m0 + i, c0:c0 + cols], tile[i], cols, row_za[r0 + i], row_t[r0 + i], cs, czb,
                                cbias, mult, zy, qmin, qmax)
        elif mode == 0:
            for i in range(rows):
                _int32_row(out_i[m0 + i, c0:c0 + cols], tile[i], cols, row_za[r0 + i], row_t[r0 + i], cs, czb, cbias)
        else:
            for i in range(rows):
                _float_row(out_f[m0 + i, c0:c0 + cols], tile[i], cols, row_za[r0 + i], row_t[r0 + i], cs, czb, cbias,
                           fscale, fbias)
        return
    if mode == 1:
        _requant_rows(tile, 0, rows, cols, row_za, row_t, r0, cs, czb, cbias, mult, zy, qmin, qmax, stage_q, 0,
                      stage_q.shape[1])
        for j in range(cols):
            orow = out_q[c0 + j, m0:m0 + rows]
            for i in range(rows):
                orow[i] = stage_q[i, j]
    elif mode == 0:
        for i in range(rows):
            _int32_row(stage_i[i], tile[i], cols, row_za[r0 + i], row_t[r0 + i], cs, czb, cbias)
        for j in range(cols):
            orow_i = out_i[c0 + j, m0:m0 + rows]
            for i in range(rows):
                orow_i[i] = stage_i[i, j]
    else:
        for i in range(rows):
            _float_row(stage_f[i], tile[i], cols, row_za[r0 + i], row_t[r0 + i], cs, czb, cbias, fscale, fbias)
        for j in range(cols):
            orow_f = out_f[c0 + j, m0:m0 + rows]
            for i in range(rows):
                orow_f[i] = stage_f[i, j]


# --------------------------------------------------------------------------- drivers


@serial_twin
@njit(cache=True, parallel=True)
def qgemm(tag, a, lda, M, Kp, K, bp, N, nr, koff, row_za, row_t, col_sum, col_zb, col_bias,
          mode, mult, zy, qmin, qmax, fscale, fbias, out_q, out_i, out_f, mc, n_groups):
    """``out[m, n]`` for ``a`` (M rows of ``lda`` bytes, first ``Kp`` used) times packed ``bp``.

    Work is split into row chunks of ``mc`` rows times ``n_groups`` groups of panels; within a task
    each panel of B stays in cache while the chunk's row tiles stream past it.
    """
    n_panels = (N + nr - 1) // nr
    n_chunks = (M + mc - 1) // mc
    k4 = Kp // 4
    per_group = (n_panels + n_groups - 1) // n_groups
    for task in prange(n_chunks * n_groups):
        chunk = task // n_groups
        group = task - chunk * n_groups
        tile = np.empty((_MR_MAX, nr), np.int32)
        m_start = chunk * mc
        m_end = min(M, m_start + mc)
        for p in range(group * per_group, min(n_panels, (group + 1) * per_group)):
            n0 = p * nr
            n1 = min(N, n0 + nr)
            cs, czb, cb = col_sum[n0:n1], col_zb[n0:n1], col_bias[n0:n1]
            cm, cf, cfb = mult[n0:n1], fscale[n0:n1], fbias[n0:n1]
            m0 = m_start
            while m0 < m_end:
                rows = microkernel(tag, a, m0 * lda, lda, bp, p * k4 * nr * 4, koff, k4, tile, m_end - m0)
                _epilogue(tile, rows, n1 - n0, row_za, row_t, m0, cs, czb, cb, mode, cm, zy, qmin, qmax, cf, cfb,
                          out_q, out_i, out_f, False, m0, n0, _NO_STAGE_U8, _NO_STAGE_I32, _NO_STAGE_F32)
                m0 += rows


_NO_STAGE_U8 = np.zeros((0, 0), np.uint8)
_NO_STAGE_I32 = np.zeros((0, 0), np.int32)
_NO_STAGE_F32 = np.zeros((0, 0), np.float32)


# --------------------------------------------------------------------------- operand preparation


@njit(cache=True)
def pack_b(b, flip, kmap, Kp, nr, out, col_sum):
    """Packs (K, N) bytes into panels ``[N/nr][Kp/4][nr][4]`` of int8, xor-ing each byte with ``flip``.

    Row k of ``b`` goes to packed row ``kmap[k]``; ``out`` is zero-filled by the caller, so packed
    rows no real k maps to, and columns past N, contribute nothing. ``col_sum[n]`` receives the
    sum of column n's signed values.
    """
    K, N = b.shape
    k4 = Kp // 4
    for n in range(N):
        p = n // nr
        j = n - p * nr
        s = 0
        for k in range(K):
            v = np.int8(b[k, n] ^ flip)
            kp = kmap[k]
            out[((p * k4 + kp // 4) * nr + j) * 4 + (kp & 3)] = v
            s += np.int32(v)
        col_sum[n] = s


@njit(cache=True)
def prepare_a(a, flip, Kp, out, row_sum):
    """Rows of ``a`` (M, K) bytes xor ``flip`` into ``out`` (M, Kp) zero-padded; their sums to ``row_sum``."""
    M, K = a.shape
    for m in range(M):
        s = 0
        for k in range(K):
            v = a[m, k] ^ flip
            out[m, k] = v
            s += np.int32(v)
        for k in range(K, Kp):
            out[m, k] = 0
        row_sum[m] = s


@njit(cache=True)
def row_sums(a, row_sum):
    M, K = a.shape
    for m in range(M):
        s = 0
        for k in range(K):
            s += np.int32(a[m, k])
        row_sum[m] = s


# --------------------------------------------------------------------------- glue: packing and calls

_EMPTY_U8 = np.zeros((0, 0), np.uint8)
_EMPTY_I32 = np.zeros((0, 0), np.int32)
_EMPTY_F32 = np.zeros((0, 0), np.float32)

# Rows of A per task: the chunk (mc * Kp bytes) should stay in L2 while B panels stream past it.
_CHUNK_BYTES = 192 * 1024


class PackedB:
    """Weights packed for :func:`qgemm`/:func:`qrt.kernels.cpu.qconv.qconv`, with their zero-point terms.

    ``groups`` independent (K, N) matrices (one per convolution group); ``col_sum`` and ``zb`` are
    (groups, N) int32 in the signed domain; ``Kp`` is the packed depth (a multiple of 4).
    """

    __slots__ = ("isa", "nr", "K", "Kp", "N", "groups", "data", "col_sum", "zb", "zb_nonzero", "koff", "tail_slack")


# Zero bytes after the last panel, for the AMX driver's last partial depth block (15 k-quad rows of 128 bytes).
AMX_TAIL_SLACK = 15 * 128


def pack_weights(mats, zero_points, kmap=None, Kp=None, isa=None, tail_slack=False) -> PackedB:
    """Packs ``mats`` (a list of (K, N) int8 or uint8 arrays, one per group) for the drivers.

    ``zero_points`` is (groups, N) integers in the weights' own type; uint8 weights and their zero
    points shift into int8. ``kmap`` places row k at packed row ``kmap[k]`` (default: k) inside a
    packed depth ``Kp`` (default: K rounded up to 4). ``tail_slack`` appends
    :data:`AMX_TAIL_SLACK` zero bytes, so the AMX driver can run a depth that is not a multiple of
    64 (:func:`qrt.kernels.cpu.qgemm_amx.usable`); callers that index ``data`` by group leave it off.
    """
    isa = isa or ISA
    nr = panel_width(isa)
    first = mats[0]
    K, N = first.shape
    flip = 0x80 if first.dtype == np.uint8 else 0
    if kmap is None:
        kmap = np.arange(K, dtype=np.int64)
    if Kp is None:
        Kp = (K + 3) // 4 * 4
    n_panels = (N + nr - 1) // nr
    panel_bytes = n_panels * (Kp // 4) * nr * 4
    slack = AMX_TAIL_SLACK if tail_slack else 0
    data = np.zeros(len(mats) * panel_bytes + slack, np.int8)
    col_sum = np.zeros((len(mats), N), np.int32)
    for g, mat in enumerate(mats):
        view = np.ascontiguousarray(mat).view(np.uint8)
        pack_b(view, np.uint8(flip), np.ascontiguousarray(kmap, dtype=np.int64), Kp, nr,
               data[g * panel_bytes:(g + 1) * panel_bytes], col_sum[g])
    packed = PackedB()
    packed.isa, packed.nr, packed.K, packed.Kp, packed.N = isa, nr, K, Kp, N
    packed.groups = len(mats)
    packed.data = data
    packed.tail_slack = slack
    packed.col_sum = col_sum
    packed.zb = (np.asarray(zero_points, dtype=np.int32).reshape(len(mats), N) - flip).astype(np.int32)
    # asked on every GEMM call: np.any costs ~2 us, a tiny layer's whole kernel time
    packed.zb_nonzero = bool(np.any(packed.zb))
    packed.koff = np.arange(Kp // 4, dtype=np.int64) * 4     # plain row-major A; convolutions pass their own
    return packed


def split_work(rows, n_panels, depth, nr=32):
    """(rows per task, panel groups) for :func:`qgemm`.

    Every task streams its rows of A once per panel and its panels of B once per row chunk, so the
    larger operand is split across tasks and the smaller one re-read: row chunks when A is the
    larger (many rows), panel groups when B is (a batch-1 or small-batch linear layer). There are
    at least two tasks per thread whenever the shape allows, and a chunk of A stays in L2.
    """
    threads = num_threads()      # numba.get_num_threads() takes a process-wide lock on every call
    mr = _MR_MAX
    cap = max(mr, (_CHUNK_BYTES // max(depth, 1)) // mr * mr)
    a_bytes = rows * depth
    b_bytes = n_panels * nr * depth
    if b_bytes >= a_bytes:
        mc = min(cap, -(-rows // mr) * mr)
        chunks = -(-rows // mc)
        n_groups = min(n_panels, max(1, -(-2 * threads // chunks)))
        return mc, n_groups
    target = min(-(-rows // mr), max(2 * threads, -(-rows // cap)))
    mc = max(mr, -(-(-(-rows // target)) // mr) * mr)
    return min(mc, cap), 1


class Epilogue:
    """What the drivers write: ``mode`` 0 int32, 1 requantized bytes, 2 float32 (see module doc)."""

    __slots__ = ("mode", "bias", "mult", "zy", "qmin", "qmax", "fscale", "fbias")

    def __init__(self, mode, groups, N, bias=None, mult=None, zy=0, qmin=0, qmax=255, fscale=None,
                 fbias=None):
        self.mode = mode
        self.bias = _per_column(bias, groups, N, np.int32)
        self.mult = _per_column(mult, groups, N, np.float64)
        self.zy, self.qmin, self.qmax = int(zy), int(qmin), int(qmax)
        self.fscale = _per_column(fscale, groups, N, np.float32)
        self.fbias = _per_column(fbias, groups, N, np.float32)


def _per_column(values, groups, N, dtype):
    if values is None:
        return np.zeros((groups, N), dtype)
    values = np.asarray(values)
    return np.ascontiguousarray(np.broadcast_to(values.astype(dtype), (groups, N)) if values.ndim <= 1
                                else values.astype(dtype).reshape(groups, N))


def matmul(a, a_flip, za_rows, packed: PackedB, epi: Epilogue, out):
    """``out`` (M, N) from ``a`` (M, K) bytes (uint8 view; ``a_flip`` 0x80 for int8 data) times ``packed``.

    ``za_rows`` is the (M,) int32 zero point of each row of ``a`` in the shifted (uint8) domain.
    ``out`` is uint8 (mode 1, any 8-bit output viewed as uint8), int32 (mode 0) or float32 (mode 2).
    """
    from . import qgemm_amx

    M, K = a.shape
    Kp = packed.Kp
    need_rowsum = packed.zb_nonzero
    if M and packed.N and qgemm_amx.usable(packed, padded=True):
        # The tiles read whole 32-row blocks of rows zero-padded to 64-byte depth blocks: always a copy.
        a_rows = qgemm_amx.padded_rows(M, qgemm_amx.depth(Kp))
        row_sum = np.empty(M, np.int32)
        prepare_a(a, np.uint8(a_flip), a_rows.shape[1], a_rows, row_sum)
        za_rows = np.ascontiguousarray(za_rows, dtype=np.int32)
        row_t = (row_sum.astype(np.int64) - np.int64(K) * za_rows).astype(np.int32) if need_rowsum \
            else np.zeros(M, np.int32)
        qgemm_amx.matmul(a_rows.reshape(-1), M, K, za_rows, row_t, packed, epi, *_outputs(epi.mode, out))
        return out
    if a_flip or K != Kp or not a.flags.c_contiguous:
        a_rows = np.empty((M, Kp), np.uint8)
        row_sum = np.empty(M, np.int32)
        if M:
            prepare_a(a, np.uint8(a_flip), Kp, a_rows, row_sum)
    else:
        a_rows = a
        row_sum = np.zeros(M, np.int32)
        if need_rowsum and M:
            row_sums(a, row_sum)
    za_rows = np.ascontiguousarray(za_rows, dtype=np.int32)
    row_t = (row_sum.astype(np.int64) - np.int64(K) * za_rows).astype(np.int32) if need_rowsum \
        else np.zeros(M, np.int32)
    if M == 0 or packed.N == 0:
        return out
    n_panels = (packed.N + packed.nr - 1) // packed.nr
    mc, n_groups = split_work(M, n_panels, Kp, packed.nr)
    out_q, out_i, out_f = _outputs(epi.mode, out)
    launcher(qgemm)(tag_for(packed.isa), a_rows.reshape(-1), Kp, M, Kp, K, packed.data, packed.N, packed.nr,
                    packed.koff, za_rows, row_t, packed.col_sum[0], packed.zb[0], epi.bias[0], epi.mode, epi.mult[0],
                    epi.zy, epi.qmin, epi.qmax, epi.fscale[0], epi.fbias[0], out_q, out_i, out_f, mc, n_groups)
    return out


def matmul_runner(M, K, a_flip, za_rows, packed: PackedB, epi: Epilogue):
    """``run(a, out)``: :func:`matmul` of ``M`` rows with everything but ``a`` and ``out`` bound
    once. A small layer's product takes a microsecond or two; gathering its ~27 arguments, the
    rows' corrections and the work split on every call cost several (the digits CNN's QGemms).
    Only the common case is bound (uint8 rows read in place, weight zero points 0, no more rows than
    one VNNI row tile where AMX would take them); others run :func:`matmul` as it is."""
    from . import qgemm_amx

    def general(a, out):
        return matmul(a, a_flip, za_rows, packed, epi, out)

    # AMX tiles would multiply 32 rows (a zero-padded copy) for a row tile's few: measured on the
    # digits CNN's 1 x 256 x 32 QGemm, VNNI rows on the same packing take less.
    if a_flip or K != packed.Kp or packed.zb_nonzero or M == 0 or packed.N == 0 \
            or (M > _MR_MAX and qgemm_amx.usable(packed, padded=True)):
        return general
    tag = tag_for(packed.isa)
    n_panels = (packed.N + packed.nr - 1) // packed.nr
    middle = (packed.Kp, M, packed.Kp, K, packed.data, packed.N, packed.nr, packed.koff,
              np.ascontiguousarray(za_rows, dtype=np.int32), np.zeros(M, np.int32), packed.col_sum[0], packed.zb[0],
              epi.bias[0], epi.mode, epi.mult[0], epi.zy, epi.qmin, epi.qmax, epi.fscale[0], epi.fbias[0])
    mode = epi.mode
    splits = {}     # thread count -> split_work's (rows per task, panel groups)

    def run(a, out):
        if not a.flags.c_contiguous:
            return general(a, out)
        threads = num_threads()
        split = splits.get(threads)
        if split is None:
            split = splits[threads] = split_work(M, n_panels, packed.Kp, packed.nr)
        launcher(qgemm)(tag, a.reshape(-1), *middle, *_outputs(mode, out), *split)
        return out
    return run


def _outputs(mode, out):
    if mode == 1:
        return out, _EMPTY_I32, _EMPTY_F32
    if mode == 0:
        return _EMPTY_U8, out, _EMPTY_F32
    return _EMPTY_U8, _EMPTY_I32, out


def matmul_rows(a_rows, K, row_sum, za, packed: PackedB, epi: Epilogue, out, zb_nonzero=None):
    """:func:`matmul` for ``a_rows`` already in the drivers' form: (M, Kp) uint8, zero past K.

    ``row_sum`` holds the rows' sums and ``za`` is one zero point for every row, as from a
    dynamic quantization that wrote the rows (:func:`qrt.ops.quantized.dynamic_quantize_rows`):
    no copy of A and no second pass for its sums. ``a_rows`` must come from
    :func:`qrt.kernels.cpu.qgemm_amx.padded_rows`, which lets the AMX driver (used where the host
    has it) read whole 32-row blocks. ``zb_nonzero`` is ``packed.zb_nonzero``, if the caller kept it.
    """
    from . import qgemm_amx

    M = a_rows.shape[0]
    if M == 0 or packed.N == 0:
        return out
    if zb_nonzero is None:
        zb_nonzero = packed.zb_nonzero
    za_rows = np.full(M, za, np.int32)
    row_t = (row_sum.astype(np.int64) - np.int64(K) * za).astype(np.int32) if zb_nonzero else np.zeros(M, np.int32)
    out_q, out_i, out_f = _outputs(epi.mode, out)
    if qgemm_amx.usable(packed):
        qgemm_amx.matmul(a_rows.reshape(-1), M, K, za_rows, row_t, packed, epi, out_q, out_i, out_f)
        return out
    n_panels = (packed.N + packed.nr - 1) // packed.nr
    mc, n_groups = split_work(M, n_panels, packed.Kp, packed.nr)
    qgemm(tag_for(packed.isa), a_rows.reshape(-1), packed.Kp, M, packed.Kp, K, packed.data, packed.N, packed.nr,
          packed.koff, za_rows, row_t, packed.col_sum[0], packed.zb[0], epi.bias[0], epi.mode, epi.mult[0], epi.zy,
          epi.qmin, epi.qmax, epi.fscale[0], epi.fbias[0], out_q, out_i, out_f, mc, n_groups)
    return out


def float_epilogue(fscale, fbias, zeros):
    """A mode-2 :class:`Epilogue` over ready (1, N) float32 ``fscale`` and ``fbias``, without copies.

    ``zeros`` is the (int32 bias, float64 multiplier) pair of (1, N) zero arrays mode 2 ignores,
    kept by the caller across calls (building them per call costs more than a small product).
    """
    epi = Epilogue.__new__(Epilogue)
    epi.mode, epi.zy, epi.qmin, epi.qmax = 2, 0, 0, 255
    epi.bias, epi.mult = zeros
    epi.fscale, epi.fbias = fscale, fbias
    return epi


# --------------------------------------------------------------------------- one float scale per row


@njit(cache=True, inline="always")
def _epilogue_row_scaled(tile, rows, cols, row_za, row_t, row_scale, r0, cs, czb, fscale, fbias, out_f, m0, c0):
    """Mode 2 with a scale per row as well as per column: ``float32(acc) * (row_scale[m] * fscale[n]) +
    fbias[n]``, the two scales' float32 product rounded first (the per-row pattern's ``Mul(scale,
    w_scale)`` before its ``Mul`` of the accumulator). Same slicing conventions as :func:`_epilogue`."""
    for i in range(rows):
        za = row_za[r0 + i]
        rt = row_t[r0 + i]
        s = row_scale[r0 + i]
        src = tile[i]
        dst = out_f[m0 + i, c0:c0 + cols]
        for j in range(cols):
            dst[j] = np.float32(np.int32(src[j] - za * cs[j] - czb[j] * rt)) * (s * fscale[j]) + fbias[j]


@njit(cache=True, parallel=True)
def qgemm_row_scaled(tag, a, lda, M, Kp, K, bp, N, nr, koff, row_za, row_t, row_scale, col_sum, col_zb, fscale,
                     fbias, out_f, mc, n_groups):
    """:func:`qgemm` writing float32 through :func:`_epilogue_row_scaled`."""
    n_panels = (N + nr - 1) // nr
    n_chunks = (M + mc - 1) // mc
    k4 = Kp // 4
    per_group = (n_panels + n_groups - 1) // n_groups
    for task in prange(n_chunks * n_groups):
        chunk = task // n_groups
        group = task - chunk * n_groups
        tile = np.empty((_MR_MAX, nr), np.int32)
        m_start = chunk * mc
        m_end = min(M, m_start + mc)
        for p in range(group * per_group, min(n_panels, (group + 1) * per_group)):
            n0 = p * nr
            n1 = min(N, n0 + nr)
            m0 = m_start
            while m0 < m_end:
                rows = microkernel(tag, a, m0 * lda, lda, bp, p * k4 * nr * 4, koff, k4, tile, m_end - m0)
                _epilogue_row_scaled(tile, rows, n1 - n0, row_za, row_t, row_scale, m0, col_sum[n0:n1],
                                     col_zb[n0:n1], fscale[n0:n1], fbias[n0:n1], out_f, m0, n0)
                m0 += rows


def matmul_rows_scaled(a_rows, K, row_t, row_za, row_scale, packed: PackedB, fscale, fbias, out):
    """:func:`matmul_rows` for rows quantized each with its own scale and zero point
    (:func:`qrt.kernels.cpu.qdynamic.quantize_rows_own_range`, which also gives ``row_t``, the rows'
    ``sum - K * zero_point``): ``row_za`` (M,) int32, ``row_scale`` (M,) float32; ``fscale`` and
    ``fbias`` (N,) float32; ``out`` (M, N) float32."""
    from . import qgemm_amx

    M = a_rows.shape[0]
    if M == 0 or packed.N == 0:
        return out
    if qgemm_amx.usable(packed):
        qgemm_amx.matmul_row_scaled(a_rows.reshape(-1), M, K, row_za, row_t, row_scale, packed, fscale, fbias, out)
        return out
    n_panels = (packed.N + packed.nr - 1) // packed.nr
    mc, n_groups = split_work(M, n_panels, packed.Kp, packed.nr)
    qgemm_row_scaled(tag_for(packed.isa), a_rows.reshape(-1), packed.Kp, M, packed.Kp, K, packed.data, packed.N,
                     packed.nr, packed.koff, row_za, row_t, row_scale, packed.col_sum[0], packed.zb[0], fscale, fbias,
                     out, mc, n_groups)
    return out
