"""InferenceSession's onnxruntime-compatible API, its input checks and its errors."""
import json
import os
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import qrt
from qrt.errors import InvalidArgument, InvalidModel, NodeExecutionError, UnsupportedOperator


def _model(opset=17):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.5, -1.0, 2.0, 0.25])
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["xw"], name="scale"),
        helper.make_node("Add", ["xw", "y"], ["s"], name="add"),
        helper.make_node("Sigmoid", ["s"], ["z"], name="act"),
    ]
    graph = helper.make_graph(nodes, "tiny", [x, y], [z], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="qrt-tests")
    model.metadata_props.add(key="author", value="tests")
    return model


def _feeds(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, 4)).astype(np.float32),
            "y": rng.standard_normal((batch, 4)).astype(np.float32)}


def test_inputs_outputs_describe_symbolic_dims():
    sess = qrt.InferenceSession(_model())
    (x, y), (z,) = sess.get_inputs(), sess.get_outputs()
    assert (x.name, x.shape, x.type) == ("x", ["batch", 4], "tensor(float)")
    assert (z.name, z.shape, z.type) == ("z", ["batch", 4], "tensor(float)")
    assert sess.get_providers() == ["CPUExecutionProvider"]
    meta = sess.get_modelmeta()
    assert meta.producer_name == "qrt-tests" and meta.custom_metadata_map == {"author": "tests"}


@pytest.mark.parametrize("source", ["proto", "bytes", "path"])
def test_one_session_serves_batch_1_and_8_and_matches_onnxruntime(source, tmp_path):
    model = _model()
    arg = {"proto": model, "bytes": model.SerializeToString(), "path": str(tmp_path / "m.onnx")}[source]
    if source == "path":
        onnx.save(model, arg)
    sess = qrt.InferenceSession(arg)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 8):
        feeds = _feeds(batch)
        (got,), (want,) = sess.run(None, feeds), ref.run(None, feeds)
        assert got.shape == (batch, 4) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.array_equal(sess.run(["z"], _feeds())[0], sess.run(None, _feeds())[0])


def test_input_model_is_not_modified(tmp_path):
    model = _model()
    before = model.SerializeToString()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    mtime, data = path.stat().st_mtime_ns, path.read_bytes()
    qrt.InferenceSession(model).run(None, _feeds())
    qrt.InferenceSession(str(path)).run(None, _feeds())
    assert model.SerializeToString() == before
    assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("feeds, message", [
    ({"x": np.zeros((2, 4), np.float32)}, "missing input(s) ['y']"),
    ({**_feeds(), "q": np.zeros(1, np.float32)}, "unknown input name(s) ['q']"),
    ({"x": np.zeros((2, 4), np.float64), "y": np.zeros((2, 4), np.float32)}, "input 'x' has dtype float64, expected float32"),
    ({"x": np.zeros((2, 4, 1), np.float32), "y": np.zeros((2, 4), np.float32)}, "input 'x' has rank 3"),
    ({"x": np.zeros((2, 5), np.float32), "y": np.zeros((2, 4), np.float32)}, "dimension 1 must be 4"),
])
def test_bad_feeds_name_the_input(feeds, message):
    sess = qrt.InferenceSession(_model())
    with pytest.raises(InvalidArgument) as info:
        sess.run(None, feeds)
    assert message in str(info.value)


def test_unknown_output_name():
    with pytest.raises(InvalidArgument, match="unknown output name"):
        qrt.InferenceSession(_model()).run(["nope"], _feeds())


def test_unreadable_and_invalid_models(tmp_path):
    with pytest.raises(InvalidModel, match="no such file"):
        qrt.InferenceSession(str(tmp_path / "missing.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a model at all")
    with pytest.raises(InvalidModel, match="bad.onnx"):
        qrt.InferenceSession(str(bad))
    model = _model()
    model.graph.node[1].input[0] = "does_not_exist"
    with pytest.raises(InvalidModel, match="'does_not_exist' of node .* is not a graph input"):
        qrt.InferenceSession(model)


def test_every_unsupported_node_is_listed_at_creation():
    model = _model()
    model.opset_import.append(helper.make_opsetid("example.custom", 1))
    model.graph.node.insert(1, helper.make_node("Frobnicate", ["xw"], ["xw2"], name="f1", domain="example.custom"))
    model.graph.node[2].input[0] = "xw2"
    model.graph.node.insert(3, helper.make_node("Wibble", ["s"], ["s2"], name="f2", domain="example.custom"))
    model.graph.node[4].input[0] = "s2"
    with pytest.raises(UnsupportedOperator) as info:
        qrt.InferenceSession(model)
    names = [n[0] for n in info.value.nodes]
    assert names == ["f1", "f2"]
    assert "example.custom::Frobnicate" in str(info.value) and "example.custom::Wibble" in str(info.value)


def test_kernel_failure_names_the_node_without_a_numba_traceback():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["a", "b"])
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"], name="bad_add")], "g", [x, y], [z])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = qrt.InferenceSession(model)
    with pytest.raises(NodeExecutionError) as info:
        sess.run(None, {"x": np.zeros((2, 3), np.float32), "y": np.zeros((4, 5), np.float32)})
    text = str(info.value)
    assert "'bad_add'" in text and "float32[2, 3]" in text and "float32[4, 5]" in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_profiling_writes_one_chrome_trace_event_per_node(tmp_path):
    options = qrt.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "prof")
    sess = qrt.InferenceSession(_model(), options)
    sess.run(None, _feeds())
    sess.run(None, _feeds())
    path = sess.end_profiling()
    events = json.load(open(path))
    assert [e["name"] for e in events] == ["scale", "add", "act"] * 2
    assert all(e["dur"] >= 0 and e["args"]["provider"] == "CPUExecutionProvider" for e in events)
    assert [e["args"]["op_name"] for e in events[:3]] == ["Mul", "Add", "Sigmoid"]


def test_run_is_safe_from_several_threads():
    sess = qrt.InferenceSession(_model())
    feeds = [_feeds(batch=3, seed=s) for s in range(8)]
    expected = [sess.run(None, f)[0] for f in feeds]
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(50):
                results[i] = sess.run(None, feeds[i])[0]
                assert np.array_equal(results[i], expected[i])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_intermediates_are_freed_after_last_use():
    plan = qrt.InferenceSession(_model()).plan
    released = [set(step.release) for step in plan.steps]
    assert released == [set(), {"xw", "y"}, {"s"}] or released[1] >= {"xw"}
    assert all("z" not in r for r in released)


def test_providers_and_cuda_request_without_gpu():
    assert "CPUExecutionProvider" in qrt.get_available_providers()
    with pytest.raises(InvalidArgument, match="unknown execution provider"):
        qrt.InferenceSession(_model(), providers=["TensorrtExecutionProvider"])
    if "CUDAExecutionProvider" not in qrt.get_available_providers():
        with pytest.raises(InvalidArgument, match="not available"):
            qrt.InferenceSession(_model(), providers=["CUDAExecutionProvider"])
        sess = qrt.InferenceSession(_model(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        assert sess.get_providers() == ["CPUExecutionProvider"]


def _rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_stays_flat_over_2000_runs():
    sess = qrt.InferenceSession(_model())
    feeds = _feeds(batch=64)
    for _ in range(200):
        sess.run(None, feeds)
    before = _rss_bytes()
    for _ in range(2000):
        sess.run(None, feeds)
    grown = _rss_bytes() - before
    # 2000 runs allocate ~4 MB of outputs in total; a per-run leak of even one output (1 KB) would show.
    assert grown < 1_000_000, f"RSS grew by {grown} bytes over 2000 runs"


def test_qdq_models_run_on_integer_kernels_unless_disabled():
    from qrt.demo import MODEL_PATH, batches, load_digits_data
    from qrt.quantization import QuantFormat, quantize_static

    calib, _, test_x, _ = load_digits_data()
    model = quantize_static(MODEL_PATH, None, batches(calib[:64]), quant_format=QuantFormat.QDQ,
                            per_channel=True).model
    fused = qrt.InferenceSession(model)
    options = qrt.SessionOptions()
    options.enable_qdq_integer_execution = False
    simulated = qrt.InferenceSession(model, options)
    assert {"QLinearConv"} <= {n.op_type for n in fused.model.graph.node}
    assert "QLinearConv" not in {n.op_type for n in simulated.model.graph.node}
    feeds = {"image": test_x[:128]}
    (a,), (b,) = fused.run(None, feeds), simulated.run(None, feeds)
    # The output's quantization step: scale of the last QuantizeLinear before the final DequantizeLinear.
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    last_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in
               {o.name for o in model.graph.output}][0]
    step = float(inits[last_dq.input[1]])
    assert np.abs(a - b).max() <= step * 1.0001


@pytest.mark.parametrize("equation", ["i.j->ij", "i-j", "ij->i->j"])
def test_malformed_einsum_is_rejected_instead_of_hanging(equation):
    # onnx 1.23's Einsum shape inference never returns on these; qrt must answer at once.
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    graph = helper.make_graph([helper.make_node("Einsum", ["a"], ["y"], equation=equation)], "g", [a], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InvalidModel, match="malformed Einsum equation"):
        qrt.InferenceSession(model)


# --- loading what onnxruntime loads ---------------------------------------------------------------
# onnxruntime is the oracle for what loads, what shapes get_inputs() reports and which feeds are refused.

def _relu_neg(inputs=None, outputs=None, nodes=None, initializer=(), ir_version=8, opsets=(("", 17),)):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])]
    outputs = outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])]
    nodes = nodes or [helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Neg", ["t"], ["y"])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = ir_version
    return model


def _ort_session(model, options=None):
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_negative_dim_value_is_a_free_dim_as_in_onnxruntime():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "h", -1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3, "h", -1])
    model = _relu_neg(inputs=[x], outputs=[y])
    ours, theirs = qrt.InferenceSession(model), _ort_session(model)
    assert ours.get_inputs()[0].shape == theirs.get_inputs()[0].shape == [None, 3, "h", None]
    feed = {"x": np.random.default_rng(0).standard_normal((2, 3, 48, 192)).astype(np.float32)}
    np.testing.assert_array_equal(ours.run(None, feed)[0], theirs.run(None, feed)[0])
    with pytest.raises(InvalidArgument, match=r"dimension 1 must be 3"):
        ours.run(None, {"x": np.zeros((2, 4, 48, 192), np.float32)})


def test_random_feeds_take_a_batch_of_one_but_never_guess_a_spatial_dim():
    from qrt.feeds import random_feeds
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "h", -1])
    sess = qrt.InferenceSession(_relu_neg(inputs=[x], outputs=[helper.make_tensor_value_info("y", 1, [-1, 3, "h", -1])]))
    with pytest.raises(InvalidArgument, match=r"'x' \[None, 3, 'h', None\]: symbolic dimension 'h' \(axis 2\) "
                                              r"has no value; give one with --free-dim h=N or --shape x="):
        random_feeds(sess)
    with pytest.raises(InvalidArgument, match=r"a free dimension \(axis 3\) has no value; give one with --shape x="):
        random_feeds(sess, dims={"h": 4})
    assert random_feeds(sess, dims={"h": 4}, default_dim=5)["x"].shape == (1, 3, 4, 5)
    assert random_feeds(sess, shapes={"x": (2, 3, 4, 6)})["x"].shape == (2, 3, 4, 6)
    with pytest.raises(InvalidArgument, match=r"shape \[2, 4, 4, 6\] given for input 'x' does not fit"):
        random_feeds(sess, shapes={"x": (2, 4, 4, 6)})


def _detector_input():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", -1])
    x.type.tensor_type.shape.dim[0].denotation = "DATA_BATCH"
    return x


@pytest.mark.parametrize("by", ["name", "denotation"])
def test_free_dimension_overrides_fix_reported_shapes_and_checked_feeds(by):
    model = _relu_neg(inputs=[_detector_input()], outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    ours, theirs = qrt.SessionOptions(), ort.SessionOptions()
    for options in (ours, theirs):
        if by == "name":
            options.add_free_dimension_override_by_name("h", 5)
            options.add_free_dimension_override_by_name("batch", 2)
        else:
            options.add_free_dimension_override_by_denotation("DATA_BATCH", 2)
        options.add_free_dimension_override_by_name("not_in_the_model", 7)
    with pytest.warns(UserWarning, match="field 'shape'"):
        sess = qrt.InferenceSession(model, ours)
    reference = _ort_session(model, theirs)
    assert sess.get_inputs()[0].shape == reference.get_inputs()[0].shape
    assert sess.get_outputs()[0].shape == reference.get_outputs()[0].shape
    good = np.ones((2, 3, 5, 7), np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": good})[0], reference.run(None, {"x": good})[0])
    bad = np.ones((1, 3, 5, 7), np.float32)
    with pytest.raises(Exception, match="index: 0 Got: 1 Expected: 2"):
        reference.run(None, {"x": bad})
    with pytest.raises(InvalidArgument, match=r"dimension 0 must be 2"):
        sess.run(None, {"x": bad})


def test_free_dimension_override_values_are_checked():
    options = qrt.SessionOptions()
    with pytest.raises(InvalidArgument, match="non-negative integer"):
        options.add_free_dimension_override_by_name("h", -3)


def _output_without_type():
    model = _relu_neg()
    model.graph.output[0].ClearField("type")
    return model


def _named_graph(name):
    model = _relu_neg()
    model.graph.name = name
    return model


def _duplicate_metadata():
    model = _relu_neg()
    model.metadata_props.add(key="a", value="1")
    model.metadata_props.add(key="a", value="2")
    return model


_W = helper.make_tensor("w", TensorProto.FLOAT, [2, 3], np.arange(6, dtype=np.float32))

# Models onnx.checker rejects and onnxruntime runs: (model, the field the warning must name).
TOLERATED = {
    "output_without_shape": (lambda: _relu_neg(outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
                             "field 'shape'"),
    "input_without_shape": (lambda: _relu_neg(inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, None)]),
                            "field 'shape'"),
    "output_without_type": (_output_without_type, "field 'type'"),
    "ir_version_unset": (lambda: _relu_neg(ir_version=0), "field 'ir_version'"),
    "nodes_out_of_order": (lambda: _relu_neg(nodes=[helper.make_node("Neg", ["t"], ["y"]),
                                                    helper.make_node("Relu", ["x"], ["t"])]), "topological order"),
    "ir3_initializer_not_an_input": (lambda: _relu_neg(ir_version=3, initializer=[_W], nodes=[
        helper.make_node("Add", ["x", "w"], ["t"]), helper.make_node("Neg", ["t"], ["y"])]), "graph.input"),
    "duplicate_metadata_keys": (_duplicate_metadata, "field 'metadata_props'"),
    "empty_graph_name": (lambda: _named_graph(""), "field 'name'"),
    "node_domain_ai_onnx": (lambda: _relu_neg(nodes=[helper.make_node("Relu", ["x"], ["t"], domain="ai.onnx"),
                                                     helper.make_node("Neg", ["t"], ["y"])]), "'ai.onnx'"),
    "no_default_opset_import": (lambda: _relu_neg(opsets=(("com.example", 1),)), "field 'opset_import'"),
}


@pytest.mark.parametrize("case", sorted(TOLERATED))
def test_checker_complaints_onnxruntime_ignores_are_one_warning(case):
    make, field = TOLERATED[case]
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(make())
    feed = {"x": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)}
    want = _ort_session(make()).run(None, feed)[0]
    model = make()
    with pytest.warns(UserWarning) as record:
        got = qrt.InferenceSession(model).run(None, feed)[0]
    messages = [str(w.message) for w in record if "onnx.checker objects to what onnxruntime accepts" in str(w.message)]
    assert len(messages) == 1 and field in messages[0], messages
    np.testing.assert_array_equal(got, want)
    assert model == make(), "the caller's model must not change"


def _undefined_elem_type():
    model = _relu_neg()
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.UNDEFINED
    return model


def _input_without_type():
    model = _relu_neg()
    model.graph.input[0].ClearField("type")
    return model


# Models onnxruntime refuses: (model, what qrt's InvalidModel must say).
BROKEN = {
    "dangling_input": (lambda: _relu_neg(nodes=[helper.make_node("Relu", ["zz"], ["t"]),
                                                helper.make_node("Neg", ["t"], ["y"])]),
                       "input 'zz' of node 'Relu' is not a graph input"),
    "cycle": (lambda: _relu_neg(nodes=[helper.make_node("Add", ["x", "u"], ["t"]), helper.make_node("Neg", ["t"], ["u"]),
                                       helper.make_node("Relu", ["u"], ["y"])]), "cycle"),
    "unknown_op": (lambda: _relu_neg(nodes=[helper.make_node("Relux", ["x"], ["t"]),
                                            helper.make_node("Neg", ["t"], ["y"])]), "No Op registered for Relux"),
    "element_type_contradiction": (lambda: _relu_neg(nodes=[helper.make_node("Cast", ["x"], ["t"], to=TensorProto.INT64),
                                                            helper.make_node("Neg", ["t"], ["y"])]),
                                   "node Neg: the output is int64 but the model declares it float"),
    "declared_output_type_wrong": (lambda: _relu_neg(outputs=[helper.make_tensor_value_info("y", TensorProto.INT64,
                                                                                            [2, 3])]),
                                   "the output is float but the model declares it int64"),
    "undefined_element_type": (_undefined_elem_type, "undefined element type"),
    "input_without_type": (_input_without_type, "graph input 'x' has no type"),
    "unknown_attribute": (lambda: _relu_neg(nodes=[helper.make_node("Relu", ["x"], ["t"], foo=1),
                                                   helper.make_node("Neg", ["t"], ["y"])]), "Unrecognized attribute"),
    "duplicate_output_name": (lambda: _relu_neg(nodes=[helper.make_node("Relu", ["x"], ["y"]),
                                                       helper.make_node("Neg", ["x"], ["y"])]), "SSA"),
    "ir_version_too_high": (lambda: _relu_neg(ir_version=99), "ir_version 99"),
    "unknown_custom_domain_not_imported": (lambda: _relu_neg(nodes=[
        helper.make_node("Relu", ["x"], ["t"], domain="com.example"), helper.make_node("Neg", ["t"], ["y"])]),
        "domain 'com.example'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_models_onnxruntime_rejects_are_invalid_models(case):
    make, message = BROKEN[case]
    with pytest.raises(Exception):
        _ort_session(make())
    with pytest.raises(InvalidModel, match=message):
        qrt.InferenceSession(make())
