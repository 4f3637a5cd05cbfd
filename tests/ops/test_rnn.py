"""LSTM, GRU and RNN against onnxruntime, beyond onnx's node tests.

Covered: a torch-like bidirectional LSTM with per-batch sequence lengths and every output; peepholes,
clip, input_forget, custom activations with alpha/beta, reverse direction, length-0 sequences,
omitted outputs, float64 (against onnx's reference evaluator), layout=1 (checked against the
time-major result, since onnxruntime rejects batch-major recurrent layers), weights given as inputs
rather than initializers, and errors.

Tolerance: float32 at rtol 1e-5, atol 1e-6. qrt's float32 tanh/sigmoid are within 6e-8 of the exact
functions and onnxruntime's within a few float32 ulps, and 20 recurrent steps compound those: the
measured gap is below 5e-7. float64 at rtol 1e-12, atol 1e-12 (libm and numpy's exp/tanh).
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import qrt

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
N_OUT = {"LSTM": 3, "GRU": 2, "RNN": 2}
rng = np.random.default_rng(7)


def _inputs(op, seq=6, batch=3, width=5, hidden=4, dirs=1, lens=None, state=True, peep=False, dtype=np.float32,
            layout=0):
    g = GATES[op]

    def rand(*shape, scale=0.6):
        return (rng.standard_normal(shape) * scale).astype(dtype)

    state_shape = (dirs, batch, hidden) if layout == 0 else (batch, dirs, hidden)
    inputs = {
        "X": rand(seq, batch, width, scale=1.0) if layout == 0 else rand(batch, seq, width, scale=1.0),
        "W": rand(dirs, g * hidden, width), "R": rand(dirs, g * hidden, hidden), "B": rand(dirs, 2 * g * hidden),
        "sequence_lens": None if lens is None else np.array(lens, np.int32),
        "initial_h": rand(*state_shape) if state else None,
    }
    if op == "LSTM":
        inputs["initial_c"] = rand(*state_shape) if state else None
        inputs["P"] = rand(dirs, 3 * hidden) if peep else None
    return inputs


def _model(op, inputs, outputs=None, opset=14, weights_as_initializers=True, out_shapes=None, **attrs):
    """One-node model; W, R, B are initializers (or graph inputs), the rest graph inputs.
    hidden_size defaults to R's (onnxruntime requires the attribute)."""
    attrs.setdefault("hidden_size", inputs["R"].shape[2])
    names = list(inputs)
    node_inputs = [n if inputs[n] is not None else "" for n in names]
    while node_inputs and not node_inputs[-1]:
        node_inputs.pop()
    outputs = outputs or ["Y", "Y_h", "Y_c"][:N_OUT[op]]
    node = helper.make_node(op, node_inputs, outputs, **attrs)
    weights = {"W", "R", "B"} if weights_as_initializers else set()
    graph_inputs = [helper.make_tensor_value_info(n, numpy_helper.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                    for n, a in inputs.items() if a is not None and n not in weights]
    elem = numpy_helper.helper.np_dtype_to_tensor_dtype(inputs["X"].dtype)
    graph_outputs = [helper.make_tensor_value_info(o, elem, None if out_shapes is None else list(out_shapes[o]))
                     for o in outputs if o]
    initializers = [numpy_helper.from_array(a, n) for n, a in inputs.items() if a is not None and n in weights]
    graph = helper.make_graph([node], "rnn", graph_inputs, graph_outputs, initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _feeds(model, inputs):
    fed = {i.name for i in model.graph.input}
    return {n: a for n, a in inputs.items() if n in fed}


def _ort(model, inputs):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, _feeds(model, inputs))


def _qrt(model, inputs, shapes):
    shaped = onnx.ModelProto()
    shaped.CopyFrom(model)
    for output, shape in zip(shaped.graph.output, shapes):
        output.CopyFrom(helper.make_tensor_value_info(output.name, output.type.tensor_type.elem_type, shape))
    return qrt.InferenceSession(shaped.SerializeToString()).run(None, _feeds(model, inputs))


def _check(op, inputs, opset=14, outputs=None, **attrs):
    model = _model(op, inputs, outputs=outputs, opset=opset, **attrs)
    want = _ort(model, inputs)
    got = _qrt(model, inputs, [w.shape for w in want])
    _assert_close(got, want)
    return got


def _assert_close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        tol = 1e-12 if w.dtype == np.float64 else 1e-5
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol if w.dtype == np.float64 else 1e-6)


def test_lstm_torch_like_bidirectional_with_sequence_lens():
    inputs = _inputs("LSTM", seq=20, batch=3, width=16, hidden=32, dirs=2, lens=[20, 13, 7])
    got = _check("LSTM", inputs, hidden_size=32, direction="bidirectional")
    y, y_h, _ = got
    assert not y[13:, :, 1].any() and not y[7:, :, 2].any()        # past each sequence's end
    np.testing.assert_array_equal(y_h[0, 1], y[12, 0, 1])          # forward: last valid step
    np.testing.assert_array_equal(y_h[1, 1], y[0, 1, 1])           # reverse: ends at step 0


@pytest.mark.parametrize("case", [
    dict(peep=True),
    dict(peep=True, attrs=dict(input_forget=1)),
    dict(attrs=dict(clip=0.4), peep=True),
    dict(dirs=1, lens=[6, 0, 3], attrs=dict(direction="reverse")),
    dict(dirs=2, lens=[2, 6, 0], state=False, attrs=dict(direction="bidirectional")),
    dict(dirs=2, attrs=dict(direction="bidirectional", activations=[
        "HardSigmoid", "LeakyRelu", "ScaledTanh", "Sigmoid", "Softsign", "Elu"],
        activation_alpha=[0.3, 0.05, 1.5, 0.8], activation_beta=[0.4, 0.7])),
    dict(attrs=dict(activations=["Sigmoid", "Affine", "ThresholdedRelu"], activation_alpha=[0.5, 0.1],
                    activation_beta=[0.2])),
    dict(attrs=dict(activations=["Sigmoid", "Softplus", "Relu"])),
], ids=["peepholes", "input_forget", "clip", "reverse-len0", "bidir-no-state", "activations-bidir",
        "affine-thresholded", "softplus-relu"])
def test_lstm_variants(case):
    attrs = dict(case.get("attrs", {}))
    inputs = _inputs("LSTM", dirs=case.get("dirs", 1), lens=case.get("lens"), state=case.get("state", True),
                     peep=case.get("peep", False))
    _check("LSTM", inputs, hidden_size=4, **attrs)


def test_lstm_single_activation_set_serves_both_directions():
    inputs = _inputs("LSTM", dirs=2)
    acts = ["HardSigmoid", "Tanh", "Softsign"]
    model = _model("LSTM", inputs, direction="bidirectional", activations=acts * 2)
    want = _ort(model, inputs)
    got = _qrt(_model("LSTM", inputs, direction="bidirectional", activations=acts), inputs, [w.shape for w in want])
    _assert_close(got, want)


def test_lstm_omitted_outputs_and_opset7():
    inputs = _inputs("LSTM", dirs=2, lens=[6, 4, 5])
    got = _check("LSTM", inputs, opset=7, outputs=["", "Y_h"], direction="bidirectional")
    assert len(got) == 1 and got[0].shape == (2, 3, 4)
    _check("LSTM", inputs, outputs=["Y", "", "Y_c"], direction="bidirectional")


def test_lstm_weights_as_graph_inputs():
    # Weights that are not constants are packed on every run instead of once at plan time.
    inputs = _inputs("LSTM", dirs=2, lens=[6, 1, 3])
    model = _model("LSTM", inputs, weights_as_initializers=False, direction="bidirectional")
    want = _ort(model, inputs)
    _assert_close(_qrt(model, inputs, [w.shape for w in want]), want)


def test_lstm_float64_against_the_reference_evaluator():
    # onnxruntime has no float64 LSTM; onnx's reference evaluator does (without sequence_lens).
    from onnx.reference import ReferenceEvaluator
    inputs = _inputs("LSTM", dirs=2, peep=True, dtype=np.float64)
    model = _model("LSTM", inputs, direction="bidirectional")
    want = ReferenceEvaluator(model).run(None, _feeds(model, inputs))
    _assert_close(_qrt(model, inputs, [w.shape for w in want]), want)


@pytest.mark.parametrize("op,extra", [("LSTM", dict(peep=True)), ("GRU", {}), ("RNN", {})])
def test_layout_1_matches_time_major(op, extra):
    batch_major = _inputs(op, dirs=2, lens=[5, 6, 2], layout=1, **extra)
    time_major = dict(batch_major)
    time_major["X"] = np.ascontiguousarray(batch_major["X"].transpose(1, 0, 2))
    for state in ("initial_h", "initial_c"):
        if batch_major.get(state) is not None:
            time_major[state] = np.ascontiguousarray(batch_major[state].transpose(1, 0, 2))
    want = _ort(_model(op, time_major, direction="bidirectional"), time_major)
    shapes = [(3, 6, 2, 4)] + [(3, 2, 4)] * (len(want) - 1)
    got = _qrt(_model(op, batch_major, direction="bidirectional", layout=1), batch_major, shapes)
    _assert_close(got, [want[0].transpose(2, 0, 1, 3)] + [w.transpose(1, 0, 2) for w in want[1:]])


@pytest.mark.parametrize("linear_before_reset", [0, 1])
@pytest.mark.parametrize("case", [
    dict(),
    dict(dirs=2, lens=[6, 1, 4], attrs=dict(direction="bidirectional")),
    dict(lens=[4, 0, 3], attrs=dict(direction="reverse", clip=0.7)),
    dict(dirs=2, state=False, attrs=dict(direction="bidirectional", activations=[
        "HardSigmoid", "Softsign", "Sigmoid", "LeakyRelu"], activation_alpha=[0.25, 0.2], activation_beta=[0.45])),
], ids=["forward", "bidir-lens", "reverse-clip-len0", "activations"])
def test_gru(linear_before_reset, case):
    inputs = _inputs("GRU", dirs=case.get("dirs", 1), lens=case.get("lens"), state=case.get("state", True))
    _check("GRU", inputs, hidden_size=4, linear_before_reset=linear_before_reset, **case.get("attrs", {}))


@pytest.mark.parametrize("case", [
    dict(),
    dict(dirs=2, lens=[2, 6, 0], attrs=dict(direction="bidirectional", activations=["Relu", "Tanh"])),
    dict(attrs=dict(clip=0.3, direction="reverse")),
], ids=["forward", "bidir-relu-lens", "reverse-clip"])
def test_rnn(case):
    inputs = _inputs("RNN", dirs=case.get("dirs", 1), lens=case.get("lens"))
    _check("RNN", inputs, hidden_size=4, **case.get("attrs", {}))


def test_wrong_weight_shape_names_the_node():
    inputs = _inputs("LSTM")
    inputs["R"] = inputs["R"][:, :, :3].copy()
    model = _model("LSTM", inputs, weights_as_initializers=False, hidden_size=4,
                   out_shapes={"Y": (6, 1, 3, 4), "Y_h": (1, 3, 4), "Y_c": (1, 3, 4)})
    model.graph.node[0].name = "encoder_lstm"
    session = qrt.InferenceSession(model.SerializeToString())
    with pytest.raises(qrt.QrtError, match="encoder_lstm.*has shape"):
        session.run(None, _feeds(model, inputs))


def test_sequence_lens_beyond_the_sequence_is_rejected():
    inputs = _inputs("GRU", lens=[6, 7, 1])
    model = _model("GRU", inputs, out_shapes={"Y": (6, 1, 3, 4), "Y_h": (1, 3, 4)})
    with pytest.raises(qrt.QrtError, match="sequence_lens"):
        qrt.InferenceSession(model.SerializeToString()).run(None, _feeds(model, inputs))


@pytest.mark.parametrize("attrs,message", [
    (dict(activations=["Sigmoid", "Gelu", "Tanh"]), "unsupported activation"),
    (dict(direction="sideways"), "direction"),
    (dict(activations=["Sigmoid", "Tanh"]), "activations lists 2"),
])
def test_bad_attributes_fail_at_session_creation(attrs, message):
    inputs = _inputs("LSTM")
    model = _model("LSTM", inputs, out_shapes={"Y": (6, 1, 3, 4), "Y_h": (1, 3, 4), "Y_c": (1, 3, 4)}, **attrs)
    with pytest.raises(qrt.InvalidModel, match=message):
        qrt.InferenceSession(model.SerializeToString())
