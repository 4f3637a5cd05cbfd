"""Sequence and optional ops against onnxruntime, on graphs shaped like torch exports.

A torch-style "split, then a loop that reads and inserts, then concat" graph (SplitToSequence ->
Loop with SequenceAt/SequenceInsert -> ConcatFromSequence, new_axis 0 and 1), negative positions,
SequenceErase's default (the last element), an If returning an optional, and sequences fed to and
returned from ``session.run`` as lists of arrays. Both runtimes run the same float32 Mul by 2 (exact)
on the same values, so results must be bit-identical: compared with rtol 0. Sessions run at the
default optimization level, so the optimizer's passes see every graph too.
"""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import qrt
from qrt.errors import QrtError

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
RNG = np.random.default_rng(17)


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def seq_vi(name, elem, rank=2):
    return helper.make_tensor_sequence_value_info(name, elem, [None] * rank)


def model_of(nodes, inputs, outputs, opset=16, initializers=()):
    graph = helper.make_graph(nodes, "seq", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def assert_same(got, want):
    if want is None:
        assert got is None
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (type(got), len(got), len(want))
        for g, w in zip(got, want):
            assert_same(g, w)
    else:
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape, (got, want)
        np.testing.assert_allclose(got, want, rtol=0, atol=0)


def compare(model, feeds):
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = qrt.InferenceSession(model).run(None, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_same(g, w)
    return got


# --- split in a loop, then concat -----------------------------------------------------------------


def _split_loop_concat(split, axis, new_axis):
    """parts = SplitToSequence(x, split); a Loop over len(parts) reads parts[i - n] (a negative position),
    doubles it and inserts it at the front of the carried sequence (so the order reverses) while
    scanning out the step number; the result is ConcatFromSequence(carried) plus the sequence itself."""
    two = helper.make_tensor("two", F, [], [2.0])
    body = helper.make_graph(
        [helper.make_node("Sub", ["i", "n"], ["back"]),
         helper.make_node("SequenceAt", ["parts", "back"], ["part"]),
         helper.make_node("Mul", ["part", "two"], ["doubled"]),
         helper.make_node("SequenceInsert", ["acc_in", "doubled", "zero"], ["acc_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["i"], ["step"])],
        "body", [vi("i", I64, []), vi("cond_in", B, []), seq_vi("acc_in", F)],
        [vi("cond_out", B, []), seq_vi("acc_out", F), vi("step", I64, [])], [two])
    nodes = [
        helper.make_node("SplitToSequence", ["x", "split"], ["parts"], axis=axis),
        helper.make_node("SequenceLength", ["parts"], ["n"]),
        helper.make_node("SequenceEmpty", [], ["empty"], dtype=F),
        helper.make_node("Loop", ["n", "", "empty"], ["acc", "steps"], body=body),
        helper.make_node("ConcatFromSequence", ["acc"], ["joined"], axis=axis, new_axis=new_axis),
    ]
    inits = [helper.make_tensor("split", I64, np.shape(split), np.ravel(split).tolist()),
             helper.make_tensor("zero", I64, [], [0])]
    return model_of(nodes, [vi("x", F, [6, 4])],
                    [vi("joined", F, [None] * (2 + new_axis)), seq_vi("acc", F), vi("steps", I64, [None])], 16, inits)


@pytest.mark.parametrize("split, axis, new_axis", [
    (2, 0, 0),              # scalar split: three [2, 4] chunks, joined back along axis 0
    (2, 0, 1),              # stacked on a new axis 0 -> [3, 2, 4]
    (2, -1, 1),             # split on the last axis, stacked on a new last axis -> [6, 2, 2]
    ([1, 3, 2], 0, 0),      # uneven chunks, joined along the split axis
])
def test_split_loop_concat_like_torch(split, axis, new_axis):
    x = RNG.standard_normal((6, 4)).astype(np.float32)
    got = compare(_split_loop_concat(split, axis, new_axis), {"x": x})
    assert isinstance(got[1], list) and len(got[1]) == len(got[2])


# --- positions, erase, construct --------------------------------------------------------------------


def _erase_model(position):
    """seq = [a, b, c]; erase (at ``position`` or, when None, the last); return the rest, its length
    and the element at -1."""
    erase_inputs = ["seq"] + ([] if position is None else ["pos"])
    nodes = [helper.make_node("SequenceConstruct", ["a", "b", "c"], ["seq"]),
             helper.make_node("SequenceErase", erase_inputs, ["rest"]),
             helper.make_node("SequenceLength", ["rest"], ["n"]),
             helper.make_node("SequenceAt", ["rest", "minus_one"], ["last"])]
    inits = [helper.make_tensor("minus_one", I64, [], [-1])]
    if position is not None:
        inits.append(helper.make_tensor("pos", I64, [], [position]))
    inputs = [vi(n, F, [2, None]) for n in "abc"]
    return model_of(nodes, inputs, [seq_vi("rest", F), vi("n", I64, []), vi("last", F, [2, None])], 11, inits)


@pytest.mark.parametrize("position", [None, 0, -3, -1, 1])
def test_sequence_erase_positions(position):
    feeds = {n: RNG.standard_normal((2, k)).astype(np.float32) for n, k in zip("abc", (1, 2, 3))}
    got = compare(_erase_model(position), feeds)
    if position is None:
        # The default erases the last element: what is left ends with b.
        np.testing.assert_array_equal(got[2], feeds["b"])


# --- optionals -------------------------------------------------------------------------------------


def _if_optional_model():
    """opt = If(cond) then Optional(x) else an empty optional tensor; has = OptionalHasElement(opt)."""
    tensor_type = helper.make_tensor_type_proto(F, [3])
    opt_type = helper.make_optional_type_proto(tensor_type)
    then_graph = helper.make_graph([helper.make_node("Optional", ["x"], ["then_opt"])], "then", [],
                                   [helper.make_value_info("then_opt", opt_type)])
    else_graph = helper.make_graph([helper.make_node("Optional", [], ["else_opt"], type=tensor_type)], "else",
                                   [], [helper.make_value_info("else_opt", opt_type)])
    nodes = [helper.make_node("If", ["cond"], ["opt"], then_branch=then_graph, else_branch=else_graph),
             helper.make_node("OptionalHasElement", ["opt"], ["has"])]
    return model_of(nodes, [vi("cond", B, []), vi("x", F, [3])],
                    [helper.make_value_info("opt", opt_type), vi("has", B, [])], 18)


@pytest.mark.parametrize("cond", [True, False])
def test_if_returns_an_optional(cond):
    got = compare(_if_optional_model(), {"cond": np.array(cond), "x": np.arange(3, dtype=np.float32)})
    assert (got[0] is not None) == cond and bool(got[1]) == cond


def test_optional_get_element_of_an_empty_optional_names_the_node():
    tensor_type = helper.make_tensor_type_proto(F, [3])
    nodes = [helper.make_node("Optional", [], ["opt"], type=tensor_type),
             helper.make_node("OptionalGetElement", ["opt"], ["y"], name="unwrap")]
    model = model_of(nodes, [], [vi("y", F, [3])], 18)
    with pytest.raises(QrtError, match=r"unwrap.*(empty|omitted)"):
        qrt.InferenceSession(model).run(None, {})


# --- sequences through session.run -----------------------------------------------------------------


def _fed_sequence_model():
    nodes = [helper.make_node("SequenceLength", ["seq"], ["n"]),
             helper.make_node("ConcatFromSequence", ["seq"], ["joined"], axis=1),
             helper.make_node("SequenceInsert", ["seq", "x", "minus_one"], ["longer"])]
    return model_of(nodes, [seq_vi("seq", F), vi("x", F, [2, None])],
                    [vi("n", I64, []), vi("joined", F, [2, None]), seq_vi("longer", F)], 11,
                    [helper.make_tensor("minus_one", I64, [], [-1])])


def test_session_takes_and_returns_sequences_as_lists():
    model = _fed_sequence_model()
    seq = [RNG.standard_normal((2, k)).astype(np.float32) for k in (3, 1, 2)]
    got = compare(model, {"seq": seq, "x": np.ones((2, 5), np.float32)})
    # Inserting at -1 puts x before the last element; the fed list itself is left as it was.
    assert [a.shape[1] for a in got[2]] == [3, 1, 5, 2] and len(seq) == 3
    session = qrt.InferenceSession(model)
    assert session.get_inputs()[0].type == "seq(tensor(float))"
    assert session.get_outputs()[2].type == "seq(tensor(float))"


def test_sequence_feed_of_the_wrong_dtype_is_rejected():
    session = qrt.InferenceSession(_fed_sequence_model())
    with pytest.raises(QrtError, match=r"seq\[1\].*int64.*float32"):
        session.run(None, {"seq": [np.zeros((2, 1), np.float32), np.zeros((2, 1), np.int64)],
                           "x": np.ones((2, 1), np.float32)})
    with pytest.raises(QrtError, match="list of arrays"):
        session.run(None, {"seq": np.zeros((2, 2), np.float32), "x": np.ones((2, 1), np.float32)})


# --- bad inputs ------------------------------------------------------------------------------------


def test_sequence_at_out_of_range_names_position_and_length():
    nodes = [helper.make_node("SequenceConstruct", ["a", "a"], ["seq"]),
             helper.make_node("SequenceAt", ["seq", "pos"], ["y"], name="pick")]
    model = model_of(nodes, [vi("a", F, [2]), vi("pos", I64, [])], [vi("y", F, [2])], 11)
    session = qrt.InferenceSession(model)
    for position in (2, -3):
        with pytest.raises(QrtError, match=rf"pick.*position {position} is out of range for a sequence of "
                                           r"length 2"):
            session.run(None, {"a": np.zeros(2, np.float32), "pos": np.array(position)})


def test_concat_from_sequence_of_mismatched_shapes_names_them():
    session = qrt.InferenceSession(_fed_sequence_model())
    with pytest.raises(QrtError, match=r"sequence element 1 of shape \[3, 1\] does not match sequence element "
                                       r"0 of shape \[2, 1\]"):
        session.run(None, {"seq": [np.zeros((2, 1), np.float32), np.zeros((3, 1), np.float32)],
                           "x": np.ones((2, 1), np.float32)})


def test_inserting_another_dtype_is_rejected_even_into_an_empty_sequence():
    nodes = [helper.make_node("SequenceEmpty", [], ["empty"], dtype=F),
             helper.make_node("SequenceInsert", ["empty", "x"], ["seq"], name="put"),
             helper.make_node("SequenceLength", ["seq"], ["n"])]
    model = model_of(nodes, [vi("x", I64, [2])], [vi("n", I64, [])], 11)
    with pytest.raises(QrtError, match=r"put.*int64.*float32"):
        qrt.InferenceSession(model).run(None, {"x": np.zeros(2, np.int64)})


def test_loop_scan_output_that_is_a_sequence_is_rejected():
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("SequenceConstruct", ["i"], ["wrapped"])],
        "body", [vi("i", I64, []), vi("cond_in", B, [])], [vi("cond_out", B, []), seq_vi("wrapped", I64, 0)])
    model = model_of([helper.make_node("Loop", ["n", ""], ["scanned"], body=body, name="loop")],
                     [vi("n", I64, [])], [vi("scanned", I64, [None])], 16)
    with pytest.raises(QrtError, match=r"loop.*scan output 0 is not a tensor"):
        qrt.InferenceSession(model).run(None, {"n": np.array(2)})
