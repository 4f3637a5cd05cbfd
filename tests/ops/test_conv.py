"""Conv and ConvTranspose against onnxruntime on cases the onnx node tests miss.

Tolerance: float32 outputs are compared at rtol=1e-5 plus an absolute term of 1e-5 x the largest
output magnitude. A convolution output is a sum of C*k products; onnxruntime and qrt add them in
different orders (and BLAS blocks them differently), so an output that cancels to near zero carries
an absolute error of a few float32 ulps of its largest terms, which pure rtol cannot absorb.
float64 outputs use rtol=1e-12 on the same footing.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import qrt
from qrt.errors import InvalidArgument, InvalidModel, QrtError
from qrt.kernels.cpu.conv import GATHER_BELOW_WIDTH
from qrt.ops.conv import TILE_COLUMNS, conv_tiling

RNG = np.random.default_rng(20240601)


def _model(op_type, inputs, attrs, opset, out_ranks, out_types=None, initializers=()):
    names = [name if value is not None else "" for name, value in inputs]
    outs = [f"y{i}" for i in range(len(out_ranks))]
    node = helper.make_node(op_type, names, outs, **attrs)
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                    for n, v in inputs if v is not None and n not in initializers]
    inits = [onnx.numpy_helper.from_array(v, n) for n, v in inputs if n in initializers]
    dtype = inputs[0][1].dtype
    types = out_types or [dtype] * len(outs)
    graph_outputs = [helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(np.dtype(t)),
                                                   [f"{o}_{d}" for d in range(r)])
                     for o, t, r in zip(outs, types, out_ranks)]
    graph = helper.make_graph([node], "g", graph_inputs, graph_outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_both(op_type, inputs, attrs, opset, out_ranks, out_types=None, initializers=()):
    """Outputs of qrt and onnxruntime for a one-node model over ``inputs`` [(name, array or None)]."""
    model = _model(op_type, inputs, attrs, opset, out_ranks, out_types, initializers)
    feeds = {n: v for n, v in inputs if v is not None and n not in initializers}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = qrt.InferenceSession(model).run(None, feeds)
    return got, want


def assert_close(got, want, rtol=1e-5, scale_atol=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    if want.dtype == np.float64:
        rtol, scale_atol = 1e-12, 1e-12
    atol = scale_atol * float(np.abs(want).max()) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def _randn(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


CONV_CASES = {
    # name: (x shape, w shape, attrs)
    "1d_stride_dilation": ((2, 3, 17), (4, 3, 3), dict(strides=[2], dilations=[2], pads=[1, 2])),
    "2d_resnet_stem": ((1, 3, 32, 32), (8, 3, 7, 7), dict(strides=[2, 2], pads=[3, 3, 3, 3])),
    "2d_3x3_same": ((2, 8, 9, 11), (6, 8, 3, 3), dict(pads=[1, 1, 1, 1])),
    "2d_pointwise": ((1, 16, 7, 7), (32, 16, 1, 1), {}),
    "2d_pointwise_strided": ((1, 16, 8, 8), (8, 16, 1, 1), dict(strides=[2, 2])),
    "2d_asymmetric_pads": ((1, 2, 6, 5), (3, 2, 2, 3), dict(pads=[0, 2, 1, 0])),
    "2d_groups": ((1, 8, 10, 10), (12, 4, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "2d_depthwise": ((2, 6, 13, 12), (6, 1, 3, 3), dict(group=6, pads=[1, 1, 1, 1])),
    "2d_depthwise_stride2_dilated": ((1, 5, 15, 16), (5, 1, 3, 3), dict(group=5, strides=[2, 2], dilations=[2, 1],
                                                                       pads=[2, 1, 1, 0])),
    "2d_depthwise_multiplier": ((1, 3, 8, 8), (6, 1, 5, 5), dict(group=3, pads=[2, 2, 2, 2])),
    "2d_same_upper_stride2": ((1, 3, 10, 9), (4, 3, 4, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "2d_same_lower_stride2": ((1, 3, 10, 9), (4, 3, 4, 3), dict(auto_pad="SAME_LOWER", strides=[2, 2])),
    "2d_valid": ((1, 3, 10, 9), (4, 3, 4, 3), dict(auto_pad="VALID", strides=[3, 2])),
    "2d_kernel_larger_than_stride_pads": ((1, 1, 3, 3), (1, 1, 3, 3), dict(pads=[2, 2, 2, 2], strides=[2, 2])),
    "3d": ((1, 2, 5, 6, 7), (3, 2, 3, 2, 3), dict(strides=[1, 2, 1], pads=[1, 0, 1, 1, 1, 0])),
    "3d_depthwise_same_upper": ((1, 4, 5, 6, 6), (4, 1, 3, 3, 3), dict(group=4, auto_pad="SAME_UPPER")),
}


@pytest.mark.parametrize("name", sorted(CONV_CASES))
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_matches_onnxruntime(name, with_bias):
    x_shape, w_shape, attrs = CONV_CASES[name]
    x, w = _randn(*x_shape), _randn(*w_shape)
    b = _randn(w_shape[0]) if with_bias else None
    got, want = run_both("Conv", [("x", x), ("w", w), ("b", b)], attrs, 17, [len(x_shape)])
    assert_close(got[0], want[0])


# Shapes that exercise the parallel tiled GEMM path (qrt.ops.conv.conv_tiling): planes over
# TILE_COLUMNS split into column tiles whose boundaries fall mid-row (and mid-depth-slice in 3-D),
# pointwise convs read in place and split into output-channel blocks, groups and images as tasks.
# Outputs at least GATHER_BELOW_WIDTH wide build columns by row segments (the shifted copy for stride
# 1 and an output as wide as the input, else per output row); narrower ones through a gather table
# (the "narrow" and "late_layer" cases here, and most of CONV_CASES).
TILED_CASES = {
    "2d_tiles_shifted": ((1, 4, 40, 41), (6, 4, 3, 3), dict(pads=[1, 1, 1, 1])),
    "2d_tiles_asymmetric_pads": ((2, 4, 30, 37), (6, 4, 3, 3), dict(pads=[1, 2, 0, 1])),
    "2d_tiles_strided_dilated": ((1, 3, 61, 70), (5, 3, 3, 3), dict(strides=[2, 1], dilations=[2, 3],
                                                                    pads=[2, 3, 1, 0])),
    "2d_tiles_groups_batch": ((3, 6, 25, 26), (9, 2, 3, 3), dict(group=3, pads=[1, 1, 1, 1])),
    "2d_pointwise_batch_groups": ((3, 8, 24, 25), (12, 4, 1, 1), dict(group=2)),
    "2d_pointwise_late_layer": ((1, 64, 7, 7), (96, 64, 1, 1), {}),
    "2d_3x3_late_layer": ((1, 32, 7, 7), (40, 32, 3, 3), dict(pads=[1, 1, 1, 1])),
    "1d_tiles": ((2, 3, 700), (5, 3, 5), dict(pads=[2, 1])),
    "3d_tiles_across_slices": ((1, 2, 4, 6, 30), (4, 2, 3, 3, 3), dict(pads=[1, 1, 1, 1, 1, 1])),
    "3d_narrow_tiles_across_slices": ((1, 2, 6, 12, 13), (4, 2, 3, 3, 3), dict(pads=[1, 1, 1, 1, 1, 1])),
}


@pytest.mark.parametrize("name", sorted(TILED_CASES))
@pytest.mark.parametrize("threads", [1, 2])
def test_conv_tiled_paths_match_onnxruntime(name, threads):
    x_shape, w_shape, attrs = TILED_CASES[name]
    x, w, b = _randn(*x_shape), _randn(*w_shape), _randn(w_shape[0])
    model = _model("Conv", [("x", x), ("w", w), ("b", b)], attrs, 17, [len(x_shape)], initializers=("w", "b"))
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    options = qrt.SessionOptions()
    options.intra_op_num_threads = threads
    got = qrt.InferenceSession(model, options).run(None, {"x": x})
    assert_close(got[0], want[0])


def test_tiled_cases_cover_both_im2col_paths():
    widths = {name: x[-1] for name, (x, _, _) in TILED_CASES.items()}
    assert min(widths.values()) < GATHER_BELOW_WIDTH <= widths["3d_tiles_across_slices"] - 2


def test_conv_tiling_splits_work_evenly():
    # Large planes: column tiles, a multiple of the workers; the 1x1 reads the whole plane in place.
    tile_p, block_m, workers = conv_tiling(1, 1, 64, 56 * 56, False, 2)
    assert -(-56 * 56 // tile_p) % 2 == 0 and tile_p <= TILE_COLUMNS and block_m == 64 and workers == 2
    assert conv_tiling(1, 1, 256, 56 * 56, True, 2) == (56 * 56, 128, 2)
    # A 7x7 plane at batch 1 is one tile: the output channels are split instead.
    assert conv_tiling(1, 1, 512, 49, False, 2) == (49, 256, 2)
    # Three groups on two workers: six tasks, not three.
    assert conv_tiling(1, 3, 60, 49, False, 2) == (49, 30, 2)
    # One worker: no channel blocks, tiles only to bound the column buffer.
    assert conv_tiling(1, 1, 512, 49, False, 1) == (49, 512, 1)
    assert conv_tiling(1, 1, 8, 5, False, 2) == (5, 4, 2)


def _conv_reference(x, w, b, strides, dilations, pads, group):
    """Convolution by its definition, in float64: explicit padding, strided dilated windows, one einsum per group."""
    n_axes = x.ndim - 2
    padded = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(pads[i], pads[n_axes + i]) for i in range(n_axes)])
    extents = [(w.shape[2 + i] - 1) * dilations[i] + 1 for i in range(n_axes)]
    windows = np.lib.stride_tricks.sliding_window_view(padded, extents, axis=tuple(range(2, 2 + n_axes)))
    windows = windows[(Ellipsis,) + tuple(slice(None, None, d) for d in dilations)]
    windows = windows[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)]
    c_group, m_group = w.shape[1], w.shape[0] // group
    letters = "dhw"[-n_axes:]
    spec = f"nc{letters.upper()}{letters},mc{letters}->nm{letters.upper()}"
    out = np.concatenate([np.einsum(spec, windows[:, g * c_group:(g + 1) * c_group],
                                    w[g * m_group:(g + 1) * m_group].astype(np.float64)) for g in range(group)], axis=1)
    return out + b.reshape((-1,) + (1,) * n_axes)


@pytest.mark.parametrize("name", ["2d_3x3_same", "1d_stride_dilation", "2d_groups", "3d"])
def test_conv_float64(name):
    # onnxruntime has no float64 Conv on CPU; the oracle is the definition evaluated in float64. (The
    # depthwise kernel is the same code for both float types; its float64 compile is left out for time.)
    x_shape, w_shape, attrs = CONV_CASES[name]
    x, w, b = (_randn(*x_shape, dtype=np.float64), _randn(*w_shape, dtype=np.float64),
               _randn(w_shape[0], dtype=np.float64))
    model = _model("Conv", [("x", x), ("w", w), ("b", b)], attrs, 17, [len(x_shape)])
    got = qrt.InferenceSession(model).run(None, {"x": x, "w": w, "b": b})[0]
    n_axes = len(x_shape) - 2
    want = _conv_reference(x, w, b, attrs.get("strides", [1] * n_axes), attrs.get("dilations", [1] * n_axes),
                           attrs.get("pads", [0] * 2 * n_axes), attrs.get("group", 1))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


def test_conv_weights_as_initializers_and_repeated_runs():
    x, w, b = _randn(1, 8, 12, 12), _randn(16, 8, 3, 3), _randn(16)
    model = _model("Conv", [("x", x), ("w", w), ("b", b)], dict(pads=[1, 1, 1, 1]), 17, [4],
                   initializers={"w", "b"})
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sess = qrt.InferenceSession(model)
    for _ in range(2):
        x = _randn(1, 8, 12, 12)
        assert_close(sess.run(None, {"x": x})[0], ref.run(None, {"x": x})[0])


def test_conv_float16_computes_in_float32():
    # onnxruntime has no float16 Conv on CPU; the oracle is its float32 result rounded to float16.
    x, w, b = _randn(1, 4, 9, 9).astype(np.float16), _randn(6, 4, 3, 3).astype(np.float16), _randn(6).astype(
        np.float16)
    model = _model("Conv", [("x", x), ("w", w), ("b", b)], dict(pads=[1, 1, 1, 1]), 17, [4])
    got = qrt.InferenceSession(model).run(None, {"x": x, "w": w, "b": b})[0]
    _, want = run_both("Conv", [("x", x.astype(np.float32)), ("w", w.astype(np.float32)),
                                ("b", b.astype(np.float32))], dict(pads=[1, 1, 1, 1]), 17, [4])
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want[0].astype(np.float16).astype(np.float32), rtol=1e-3,
                               atol=1e-3)


def test_conv_channel_mismatch_names_shapes():
    x, w = _randn(1, 3, 5, 5), _randn(4, 2, 3, 3)
    model = _model("Conv", [("x", x), ("w", w)], {}, 17, [4])
    with pytest.raises(InvalidArgument, match=r"\(1, 3, 5, 5\).*\(4, 2, 3, 3\)"):
        qrt.InferenceSession(model).run(None, {"x": x, "w": w})


def test_conv_bad_auto_pad_is_invalid_model():
    x, w = _randn(1, 3, 5, 5), _randn(4, 3, 3, 3)
    model = _model("Conv", [("x", x), ("w", w)], dict(auto_pad="SAME"), 17, [4])
    with pytest.raises(InvalidModel, match="auto_pad"):
        qrt.InferenceSession(model)


def test_conv_window_larger_than_input_is_an_error():
    x, w = _randn(1, 1, 2, 2), _randn(1, 1, 3, 3)
    model = _model("Conv", [("x", x), ("w", w)], {}, 17, [4])
    with pytest.raises(QrtError, match="empty"):
        qrt.InferenceSession(model).run(None, {"x": x, "w": w})


CONV_TRANSPOSE_CASES = {
    "1d_stride_output_padding": ((1, 3, 5), (3, 2, 3), dict(strides=[2], output_padding=[1])),
    "2d_pads_strides": ((2, 4, 5, 6), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 0, 1, 2])),
    "2d_dilations": ((1, 2, 4, 4), (2, 3, 3, 2), dict(dilations=[2, 3])),
    "2d_groups": ((1, 6, 4, 5), (6, 2, 3, 3), dict(group=3, strides=[2, 1], pads=[1, 1, 1, 1])),
    "2d_depthwise": ((1, 4, 5, 5), (4, 1, 4, 4), dict(group=4, strides=[2, 2], pads=[1, 1, 1, 1])),
    "2d_output_shape": ((1, 2, 4, 4), (2, 3, 3, 3), dict(strides=[2, 2], output_shape=[9, 10])),
    "2d_same_upper_even": ((1, 2, 4, 5), (2, 3, 4, 4), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "2d_same_lower_even": ((1, 2, 4, 5), (2, 3, 4, 4), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "2d_valid": ((1, 2, 3, 4), (2, 2, 3, 3), dict(strides=[2, 3], auto_pad="VALID")),
    "3d": ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), dict(strides=[2, 1, 2], pads=[0, 1, 0, 1, 0, 1])),
}


@pytest.mark.parametrize("name", sorted(CONV_TRANSPOSE_CASES))
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_transpose_matches_onnxruntime(name, with_bias):
    x_shape, w_shape, attrs = CONV_TRANSPOSE_CASES[name]
    x, w = _randn(*x_shape), _randn(*w_shape)
    b = _randn(w_shape[1] * attrs.get("group", 1)) if with_bias else None
    got, want = run_both("ConvTranspose", [("x", x), ("w", w), ("b", b)], attrs, 17, [len(x_shape)])
    assert_close(got[0], want[0])


def _conv_transpose_reference(x, w, strides, begins, out_sizes):
    """Direct scatter definition of a 2-D, ungrouped ConvTranspose, for checking the padding split."""
    n, c, h, wd = x.shape
    m, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    full = np.zeros((n, m, (h - 1) * strides[0] + kh, (wd - 1) * strides[1] + kw))
    for i in range(h):
        for j in range(wd):
            full[:, :, i * strides[0]:i * strides[0] + kh, j * strides[1]:j * strides[1] + kw] += \
                np.einsum("nc,cmkl->nmkl", x[:, :, i, j].astype(np.float64), w.astype(np.float64))
    return full[:, :, begins[0]:begins[0] + out_sizes[0], begins[1]:begins[1] + out_sizes[1]]


@pytest.mark.parametrize("auto_pad, begins", [("SAME_UPPER", (0, 0)), ("SAME_LOWER", (1, 1))])
def test_conv_transpose_odd_same_padding_follows_spec(auto_pad, begins):
    # Stride 2, kernel 3, input 4: the full output has 2*3+3 = 9 pixels per axis and SAME asks for 4*2 = 8,
    # so one pixel of padding goes. The spec removes it at the end for SAME_UPPER, at the start for SAME_LOWER.
    x, w = _randn(1, 2, 4, 4), _randn(2, 3, 3, 3)
    model = _model("ConvTranspose", [("x", x), ("w", w)], dict(strides=[2, 2], auto_pad=auto_pad), 17, [4])
    got = qrt.InferenceSession(model).run(None, {"x": x, "w": w})[0]
    want = _conv_transpose_reference(x, w, (2, 2), begins, (8, 8))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_conv_transpose_output_shape_with_batch_and_channels():
    # Some exporters write output_shape with the N and C dimensions; the spatial tail is what counts.
    x, w = _randn(1, 2, 3, 3), _randn(2, 2, 3, 3)
    spatial = _model("ConvTranspose", [("x", x), ("w", w)], dict(strides=[2, 2], output_shape=[7, 8]), 17, [4])
    full = _model("ConvTranspose", [("x", x), ("w", w)], dict(strides=[2, 2], output_shape=[1, 2, 7, 8]), 17, [4])
    a = qrt.InferenceSession(spatial).run(None, {"x": x, "w": w})[0]
    b = qrt.InferenceSession(full).run(None, {"x": x, "w": w})[0]
    assert a.shape == (1, 2, 7, 8)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("weight_is_initializer", [False, True])
def test_conv_transpose_weight_packing_follows_the_weight(weight_is_initializer):
    # A fed weight changed in place between runs must be read afresh; an initializer is packed once.
    x, w = _randn(1, 4, 5, 5), _randn(4, 3, 3, 3)
    model = _model("ConvTranspose", [("x", x), ("w", w)], dict(strides=[2, 2], group=2, pads=[1, 1, 1, 1]), 17,
                   [4], initializers={"w"} if weight_is_initializer else ())
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sess = qrt.InferenceSession(model)
    feeds = {"x": x} if weight_is_initializer else {"x": x, "w": w}
    for _ in range(3):
        assert_close(sess.run(None, feeds)[0], ref.run(None, feeds)[0])
        if not weight_is_initializer:
            w *= -0.5
        feeds["x"] = _randn(1, 4, 5, 5)


FUSED_EPILOGUE_CASES = {
    # name: (x shape, w shape, attrs): one per kernel path the activation is stored by
    "depthwise": ((1, 6, 13, 12), (6, 1, 3, 3), dict(group=6, pads=[1, 1, 1, 1])),
    "tiled": ((1, 4, 40, 41), (6, 4, 3, 3), dict(pads=[1, 1, 1, 1])),
    "single_tile": ((1, 8, 7, 7), (10, 8, 3, 3), dict(pads=[1, 1, 1, 1])),
    "pointwise": ((2, 8, 9, 9), (10, 8, 1, 1), {}),
}


@pytest.mark.parametrize("name", sorted(FUSED_EPILOGUE_CASES))
@pytest.mark.parametrize("activation, params", [("Relu", []), ("LeakyRelu", [0.1]), ("Clip", [-0.5, 0.7]),
                                                ("HardSigmoid", [0.3, 0.4])])
def test_fused_conv_epilogue_matches_onnxruntime(name, activation, params):
    x_shape, w_shape, attrs = FUSED_EPILOGUE_CASES[name]
    x, w, b = _randn(*x_shape), _randn(*w_shape), _randn(w_shape[0])
    if params:
        attrs = dict(attrs, activation_params=params)
    node = helper.make_node("FusedConv", ["x", "w", "b"], ["y0"], domain="com.microsoft", activation=activation,
                            **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y0", onnx.TensorProto.FLOAT, ["n", "m", "h", "w"])],
                              [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    options = qrt.SessionOptions()
    options.intra_op_num_threads = 2
    got = qrt.InferenceSession(model, options).run(None, {"x": x})
    assert_close(got[0], want[0])
