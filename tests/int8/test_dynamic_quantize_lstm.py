"""com.microsoft DynamicQuantizeLSTM against onnxruntime, and quantize_dynamic emitting it.

onnxruntime runs with one intra-op thread: with more it quantizes the hidden state per block of
batch entries, so its numbers depend on its thread count (qrt matches the one-thread result).

Tolerance: rtol 1e-5, atol 1e-6, as for the float LSTM (tests/ops/test_rnn.py). Both runtimes
quantize X and the state with the same float32 scale, zero point and rounding, the int8 products
are exact integer sums, and their float32 scaling is the same product; what remains is the gate
activations (qrt's rational tanh against MLAS's, a few float32 ulps) and onnxruntime's fused
multiply-add when it accumulates the recurrent product. Measured: below 7.2e-7 absolute on outputs
up to 14 in magnitude (and 2.9e-6 on the 512-wide bidirectional layer of ddddocr's common_old.onnx,
whose cell state reaches 14.4).
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qrt
from qrt.errors import InvalidModel
from qrt.quantization import quantize_dynamic

RTOL, ATOL = 1e-5, 1e-6
SHAPES = {"Y": lambda s, d, b, h: [s, d, b, h], "Y_h": lambda s, d, b, h: [d, b, h],
          "Y_c": lambda s, d, b, h: [d, b, h]}


def _node_model(direction="forward", seq=5, batch=3, width=6, hidden=4, lens=None, per_channel=False,
                weight_type=np.int8, outputs=("Y", "Y_h", "Y_c"), peepholes=False, state=True, seed=0, **attrs):
    """One DynamicQuantizeLSTM node with random quantized weights, and its feeds."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    n = 4 * hidden
    low, high = (-127, 128) if weight_type == np.int8 else (0, 256)
    param_shape = (dirs, n) if per_channel else (dirs,)

    def scales():
        return (rng.random(param_shape) * 0.01 + 0.002).astype(np.float32)

    def zero_points(value):
        # onnxruntime requires 0 for int8 and one value per direction for uint8 weights.
        return np.full(param_shape, 0 if weight_type == np.int8 else value, weight_type)

    initializers = {
        "W": rng.integers(low, high, (dirs, width, n)).astype(weight_type),
        "R": rng.integers(low, high, (dirs, hidden, n)).astype(weight_type),
        "B": (rng.standard_normal((dirs, 8 * hidden)) * 0.3).astype(np.float32),
        "P": (rng.standard_normal((dirs, 3 * hidden)) * 0.3).astype(np.float32) if peepholes else None,
        "W_scale": scales(), "W_zero_point": zero_points(128), "R_scale": scales(), "R_zero_point": zero_points(120),
    }
    feeds = {"X": rng.standard_normal((seq, batch, width)).astype(np.float32)}
    if lens is not None:
        feeds["sequence_lens"] = np.array(lens, np.int32)
    if state:
        feeds["initial_h"] = (rng.standard_normal((dirs, batch, hidden)) * 0.5).astype(np.float32)
        feeds["initial_c"] = (rng.standard_normal((dirs, batch, hidden)) * 0.5).astype(np.float32)
    order = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P", "W_scale", "W_zero_point",
             "R_scale", "R_zero_point"]
    present = {k for k, v in initializers.items() if v is not None} | set(feeds)
    node = helper.make_node("DynamicQuantizeLSTM", [k if k in present else "" for k in order], list(outputs),
                            domain="com.microsoft", direction=direction, hidden_size=hidden, **attrs)
    graph = helper.make_graph(
        [node], "dq_lstm",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, SHAPES[o](seq, dirs, batch, hidden)) for o in outputs if o],
        initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items() if v is not None])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid("com.microsoft", 1)])
    return model, feeds


def _ort(model, feeds):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _qrt(model, feeds):
    model = model if isinstance(model, str) else model.SerializeToString()
    return qrt.InferenceSession(model).run(None, feeds)


def _assert_close(expected, actual):
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual):
        assert e.shape == a.shape and a.dtype == np.float32
        np.testing.assert_allclose(a, e, rtol=RTOL, atol=ATOL)


CASES = {
    "forward": {},
    "reverse": {"direction": "reverse"},
    "bidirectional_per_channel_lens": {"direction": "bidirectional", "per_channel": True, "lens": [3, 5, 1]},
    "lens_with_zero_length": {"lens": [5, 2, 0]},
    "uint8_weights": {"weight_type": np.uint8, "direction": "bidirectional", "per_channel": True},
    "peepholes_clip_input_forget": {"peepholes": True, "clip": 2.0, "input_forget": 1},
    # Y omitted: ended entries keep their state in the next step's quantization range.
    "lens_without_y": {"lens": [4, 2, 3], "outputs": ("", "Y_h", "Y_c")},
    "wider_no_initial_state": {"state": False, "seq": 12, "batch": 5, "width": 16, "hidden": 24,
                               "direction": "bidirectional"},
}


@pytest.mark.parametrize("case", CASES)
def test_matches_onnxruntime(case):
    model, feeds = _node_model(**CASES[case])
    _assert_close(_ort(model, feeds), _qrt(model, feeds))


def test_state_quantization_follows_which_outputs_exist():
    """With unequal lengths, Y's presence changes onnxruntime's state ranges; qrt follows it, so the
    two Y_h differ in both runtimes and each matches the other's."""
    with_y, feeds = _node_model(lens=[5, 1, 2], seed=3)
    without_y, _ = _node_model(lens=[5, 1, 2], seed=3, outputs=("", "Y_h", "Y_c"))
    ort_with, ort_without = _ort(with_y, feeds)[1], _ort(without_y, feeds)[0]
    assert np.abs(ort_with - ort_without).max() > 1e-4
    np.testing.assert_allclose(_qrt(with_y, feeds)[1], ort_with, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(_qrt(without_y, feeds)[0], ort_without, rtol=RTOL, atol=ATOL)


def test_bad_scale_shape_is_rejected_at_session_creation():
    model, _ = _node_model(direction="bidirectional")
    scale = next(i for i in model.graph.initializer if i.name == "W_scale")
    scale.CopyFrom(numpy_helper.from_array(np.full(3, 0.01, np.float32), "W_scale"))
    with pytest.raises(InvalidModel, match="W_scale has shape"):
        qrt.InferenceSession(model.SerializeToString())


def _float_lstm(tmp_path, direction="bidirectional", hidden=8, width=5):
    rng = np.random.default_rng(1)
    dirs = 2 if direction == "bidirectional" else 1
    weights = {"W": rng.standard_normal((dirs, 4 * hidden, width)), "R": rng.standard_normal((dirs, 4 * hidden, hidden)),
               "B": rng.standard_normal((dirs, 8 * hidden))}
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y", "Y_h"], direction=direction, hidden_size=hidden)
    graph = helper.make_graph(
        [node], "lstm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, 2, width])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, dirs, 2, hidden]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [dirs, 2, hidden])],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    path = tmp_path / "lstm.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_dynamic_emits_what_onnxruntime_emits(tmp_path, per_channel):
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    source = _float_lstm(tmp_path)
    ours, theirs = tmp_path / "qrt.onnx", tmp_path / "ort.onnx"
    quantize_dynamic(source, ours, per_channel=per_channel)
    ort_quantize_dynamic(str(source), str(theirs), per_channel=per_channel)
    ours_model, theirs_model = onnx.load(ours), onnx.load(theirs)
    assert [(n.op_type, n.domain) for n in ours_model.graph.node] == [("DynamicQuantizeLSTM", "com.microsoft")]
    ours_weights = {i.name: numpy_helper.to_array(i) for i in ours_model.graph.initializer}
    for init in theirs_model.graph.initializer:
        expected = numpy_helper.to_array(init)
        assert ours_weights[init.name].dtype == expected.dtype
        np.testing.assert_array_equal(ours_weights[init.name], expected)
    x = np.random.default_rng(2).standard_normal((4, 2, 5)).astype(np.float32)
    _assert_close(_ort(str(ours), {"X": x}), _qrt(str(ours), {"X": x}))
