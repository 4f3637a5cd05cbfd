"""If, Loop and Scan against onnxruntime on cases the onnx node tests miss.

Outer-scope reads (including two levels up), for/while/both loop forms, zero-trip loops whose
scan outputs must still have the declared type, Scan-8 batches with sequence_lens, and Scan-9
axes and directions. The bodies do float32 Add/Mul on small values; each output element is a
handful of roundings done in the same order by both runtimes, so results must match at rtol 1e-6.
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import qrt
from qrt.errors import QrtError

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
RNG = np.random.default_rng(11)


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def model_of(nodes, inputs, outputs, opset, initializers=()):
    graph = helper.make_graph(nodes, "cf", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def compare(model, feeds, rtol=1e-6):
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = qrt.InferenceSession(model).run(None, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=0)
    return got


# --- If ---------------------------------------------------------------------------------------------------


def _if_model(opset):
    """y = x * w + 1 if cond else x - w, both branches reading x and w from the outer graph."""
    one = helper.make_tensor("one", F, [], [1.0])
    then_graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "one"], ["then_y"])],
        "then", [], [vi("then_y", F, [2, 3])], [one])
    else_graph = helper.make_graph([helper.make_node("Sub", ["x", "w"], ["else_y"])], "else", [],
                                   [vi("else_y", F, [2, 3])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)
    return model_of([node], [vi("cond", B, []), vi("x", F, [2, 3]), vi("w", F, [3])], [vi("y", F, [2, 3])],
                    opset)


@pytest.mark.parametrize("opset", [11, 13, 16, 19])
@pytest.mark.parametrize("cond", [True, False])
def test_if_branches_read_outer_scope(opset, cond):
    feeds = {"cond": np.array(cond), "x": RNG.standard_normal((2, 3)).astype(np.float32),
             "w": RNG.standard_normal(3).astype(np.float32)}
    compare(_if_model(opset), feeds)


def test_if_with_non_scalar_cond_fails_clearly():
    feeds = {"cond": np.array([True, False]), "x": np.zeros((2, 3), np.float32), "w": np.zeros(3, np.float32)}
    model = _if_model(13)
    model.graph.input[0].type.tensor_type.shape.Clear()
    with pytest.raises(QrtError, match="cond"):
        qrt.InferenceSession(model).run(None, feeds)


# --- Loop -------------------------------------------------------------------------------------------------


def _loop_model(with_trip, with_cond, threshold=None):
    """acc <- acc * 0.5 + x[i % 3] + bias; scan out acc; stops at M trips and/or when sum(acc) >= threshold.

    The body reads ``x`` and ``bias`` from the outer graph and ``threshold`` from an initializer there.
    """
    half = helper.make_tensor("half", F, [], [0.5])
    three = helper.make_tensor("three", I64, [], [3])
    body_nodes = [
        helper.make_node("Mod", ["i", "three"], ["row"]),
        helper.make_node("Gather", ["x", "row"], ["xi"], axis=0),
        helper.make_node("Mul", ["acc_in", "half"], ["scaled"]),
        helper.make_node("Add", ["scaled", "xi"], ["partial"]),
        helper.make_node("Add", ["partial", "bias"], ["acc_out"]),
        helper.make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0),
        helper.make_node("Less", ["total", "threshold"], ["cond_out"]),
        helper.make_node("Identity", ["acc_out"], ["scan_acc"]),
    ]
    body = helper.make_graph(body_nodes, "body", [vi("i", I64, []), vi("cond_in", B, []), vi("acc_in", F, [4])],
                             [vi("cond_out", B, []), vi("acc_out", F, [4]), vi("scan_acc", F, [4])],
                             [half, three])
    node = helper.make_node("Loop", ["M" if with_trip else "", "cond" if with_cond else "", "acc0"],
                            ["acc", "history"], body=body)
    inputs = [vi("x", F, [3, 4]), vi("bias", F, [4]), vi("acc0", F, [4])]
    if with_trip:
        inputs.append(vi("M", I64, []))
    if with_cond:
        inputs.append(vi("cond", B, []))
    threshold_init = helper.make_tensor("threshold", F, [], [threshold if threshold is not None else 1e9])
    return model_of([node], inputs, [vi("acc", F, [4]), vi("history", F, [None, 4])], 13, [threshold_init])


def _loop_feeds(trips=None, cond=None):
    # With bias 1 the accumulator's sum tends to 2 * (row sum + 4) >= 8, so a threshold of 7 always stops.
    feeds = {"x": np.random.default_rng(3).uniform(0, 1, (3, 4)).astype(np.float32), "bias": np.ones(4, np.float32),
             "acc0": np.zeros(4, np.float32)}
    if trips is not None:
        feeds["M"] = np.array(trips, np.int64)
    if cond is not None:
        feeds["cond"] = np.array(cond)
    return feeds


@pytest.mark.parametrize("trips", [1, 5])
def test_loop_for(trips):
    _, history = compare(_loop_model(True, False), _loop_feeds(trips))
    assert history.shape == (trips, 4)


def test_loop_while_stops_on_body_condition():
    _, history = compare(_loop_model(False, True, threshold=7.0), _loop_feeds(cond=True))
    assert 1 < history.shape[0] < 10


def test_loop_trip_count_and_condition():
    compare(_loop_model(True, True, threshold=7.0), _loop_feeds(3, True))
    compare(_loop_model(True, True, threshold=7.0), _loop_feeds(100, True))


@pytest.mark.parametrize("trips,cond", [(0, None), (4, False)])
def test_loop_zero_iterations_keeps_declared_scan_type(trips, cond):
    model = _loop_model(True, cond is not None, threshold=7.0)
    acc, history = compare(model, _loop_feeds(trips, cond))
    np.testing.assert_array_equal(acc, np.zeros(4, np.float32))
    assert history.dtype == np.float32 and history.shape == (0, 4)


def test_loop_nested_in_if_reads_two_levels_up():
    """An If whose then-branch runs a Loop whose body reads ``step`` from the main graph."""
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c_out"]),
                              helper.make_node("Add", ["v", "step"], ["v_out"])],
                             "body", [vi("i", I64, []), vi("c", B, []), vi("v", F, [2])],
                             [vi("c_out", B, []), vi("v_out", F, [2])])
    then_graph = helper.make_graph([helper.make_node("Loop", ["M", "", "start"], ["looped"], body=body)],
                                   "then", [], [vi("looped", F, [2])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["start"], ["negated"])], "else", [],
                                   [vi("negated", F, [2])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)
    model = model_of([node], [vi("cond", B, []), vi("M", I64, []), vi("start", F, [2]), vi("step", F, [2])],
                     [vi("y", F, [2])], 16)
    for cond in (True, False):
        feeds = {"cond": np.array(cond), "M": np.array(3, np.int64), "start": np.array([1.0, 2.0], np.float32),
                 "step": np.array([0.5, -1.0], np.float32)}
        compare(model, feeds)


# --- Scan -------------------------------------------------------------------------------------------------


def _cumulative_body(state_shape, step_shape):
    """state <- state + step * 2; scan outputs: the new state and step - state."""
    two = helper.make_tensor("two", F, [], [2.0])
    nodes = [helper.make_node("Mul", ["step", "two"], ["doubled"]),
             helper.make_node("Add", ["state_in", "doubled"], ["state_out"]),
             helper.make_node("Sub", ["step", "state_out"], ["diff"])]
    return helper.make_graph(nodes, "body", [vi("state_in", F, state_shape), vi("step", F, step_shape)],
                             [vi("state_out", F, state_shape), vi("diff", F, step_shape)], [two])


@pytest.mark.parametrize("in_axis,in_dir,out_axis,out_dir", [(0, 0, 0, 0), (1, 1, 0, 0), (1, 0, 1, 1),
                                                             (-1, 1, -1, 0)])
def test_scan9_axes_and_directions(in_axis, in_dir, out_axis, out_dir):
    x = RNG.standard_normal((3, 5)).astype(np.float32)     # scanned along in_axis
    step_len = x.shape[1 - in_axis if in_axis >= 0 else 0]
    node = helper.make_node("Scan", ["s0", "x"], ["s", "diffs"], body=_cumulative_body([step_len], [step_len]),
                            num_scan_inputs=1, scan_input_axes=[in_axis], scan_input_directions=[in_dir],
                            scan_output_axes=[out_axis], scan_output_directions=[out_dir])
    model = model_of([node], [vi("s0", F, [step_len]), vi("x", F, [3, 5])],
                     [vi("s", F, [step_len]), vi("diffs", F, [None, None])], 11)
    compare(model, {"s0": np.ones(step_len, np.float32), "x": x})


def test_scan8_batch_with_sequence_lens():
    body = _cumulative_body([2], [2])
    node = helper.make_node("Scan", ["lens", "s0", "x"], ["s", "diffs"], body=body, num_scan_inputs=1,
                            directions=[1])
    model = model_of([node], [vi("lens", I64, [3]), vi("s0", F, [3, 2]), vi("x", F, [3, 4, 2])],
                     [vi("s", F, [3, 2]), vi("diffs", F, [3, 4, 2])], 8)
    # Steps past a sequence's length are zero in the scan outputs of both runtimes.
    feeds = {"lens": np.array([4, 2, 1], np.int64), "s0": RNG.standard_normal((3, 2)).astype(np.float32),
             "x": RNG.standard_normal((3, 4, 2)).astype(np.float32)}
    compare(model, feeds)


def test_scan_sequence_length_mismatch_fails():
    body = helper.make_graph([helper.make_node("Add", ["st", "ea"], ["st_out"]),
                              helper.make_node("Identity", ["ea"], ["o1"]),
                              helper.make_node("Identity", ["eb"], ["o2"])],
                             "body", [vi("st", F, [2]), vi("ea", F, [2]), vi("eb", F, [2])],
                             [vi("st_out", F, [2]), vi("o1", F, [2]), vi("o2", F, [2])])
    node = helper.make_node("Scan", ["s0", "a", "b"], ["s", "d1", "d2"], num_scan_inputs=2, body=body)
    model = model_of([node], [vi("s0", F, [2]), vi("a", F, [None, 2]), vi("b", F, [None, 2])],
                     [vi("s", F, [2]), vi("d1", F, [None, 2]), vi("d2", F, [None, 2])], 11)
    with pytest.raises(QrtError, match="sequence length"):
        qrt.InferenceSession(model).run(None, {"s0": np.zeros(2, np.float32), "a": np.zeros((3, 2), np.float32),
                                               "b": np.zeros((4, 2), np.float32)})
