"""Preprocessing embedded in the model (qrt.preprocessing) against the same steps done by hand in numpy.

Tolerances: the embedded steps compute what the numpy reference computes, in float32, in the same
order (cast, transpose, channel flip, x * scale, - mean, / std), so the network input agrees to a
float32 rounding or two; through classic_cnn (outputs of order 1) the outputs agree to 1e-5 absolute,
the bound the issue sets. The resize case compares against onnxruntime's Resize, the oracle, on the
same raw image. After quantization both models see the same activation ranges, so their int8
outputs agree to within one output quantization step.
"""
import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qrt
from model_builders import classic_cnn
from qrt.errors import InvalidArgument, InvalidModel
from qrt.preprocessing import METADATA_KEY, embed_preprocessing, image_feed, preprocessing_nodes, preprocessing_of

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def _ort(model):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _images(batch, height=32, width=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def _by_hand(images):
    """What a serving client would do before feeding the original model: BGR NHWC uint8 -> RGB NCHW float."""
    x = images[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
    return ((x - np.array(MEAN, np.float32).reshape(1, 3, 1, 1)) / np.array(STD, np.float32).reshape(1, 3, 1, 1))


@pytest.fixture(scope="module")
def embedded():
    return embed_preprocessing(classic_cnn(), layout="NHWC", color="BGR", scale=1 / 255, mean=MEAN, std=STD)


def test_embedded_model_takes_raw_images_and_keeps_dynamic_batch(embedded):
    raw = embedded.graph.input[0]
    assert raw.name == "input" and raw.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in raw.type.tensor_type.shape.dim]
    assert dims == ["batch_size", 32, 32, 3]
    record = json.loads({p.key: p.value for p in embedded.metadata_props}[METADATA_KEY])
    assert record["layout"] == "NHWC" and record["color"] == "BGR" and record["mean"] == MEAN
    assert preprocessing_of(embedded) == record
    ops = [n.op_type for n in embedded.graph.node[:6]]
    assert ops == ["Cast", "Transpose", "Gather", "Mul", "Sub", "Div"]


@pytest.mark.parametrize("batch", [1, 4])
def test_raw_images_through_embedded_equal_hand_preprocessed_through_original(embedded, batch):
    images = _images(batch, seed=batch)
    original = classic_cnn()
    want_qrt, = qrt.InferenceSession(original).run(None, {"input": _by_hand(images)})
    want_ort, = _ort(original).run(None, {"input": _by_hand(images)})
    got_qrt, = qrt.InferenceSession(embedded).run(None, {"input": images})
    got_ort, = _ort(embedded).run(None, {"input": images})
    assert got_qrt.shape == (batch, 10)
    np.testing.assert_allclose(got_qrt, want_qrt, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_ort, want_ort, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_qrt, got_ort, atol=1e-5, rtol=0)


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_resize_inside_the_model_matches_onnxruntime_for_any_image_size(interpolation):
    model = embed_preprocessing(classic_cnn(), resize=(32, 32), interpolation=interpolation, mean=MEAN, std=STD)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch_size", "input_height", "input_width", 3]
    resize = next(n for n in model.graph.node if n.op_type == "Resize")
    assert onnx.helper.get_attribute_value(resize.attribute[0]) in (interpolation.encode(), b"half_pixel")
    for shape in [(2, 48, 40), (1, 20, 33)]:
        images = _images(*shape, seed=shape[1])
        got, = qrt.InferenceSession(model).run(None, {"input": images})
        want, = _ort(model).run(None, {"input": images})
        assert got.shape == (shape[0], 10)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_quantized_after_embedding_agrees_with_quantized_original(embedded, tmp_path):
    images = _images(16, seed=7)
    original = classic_cnn()
    q_original = qrt.quantize_static(original, None, [{"input": _by_hand(images[i:i + 4])} for i in range(0, 16, 4)])
    q_embedded = qrt.quantize_static(embedded, None, [{"input": images[i:i + 4]} for i in range(0, 16, 4)])
    # The embedded steps stayed float ops (the optimizer may drop the final Identity); the network's
    # input is quantized after them, as the original's graph input is.
    steps = preprocessing_nodes(embedded)
    kept = sorted(n.op_type for n in q_embedded.model.graph.node if n.name in steps)
    assert kept == sorted(["Cast", "Transpose", "Gather", "Mul", "Sub", "Div"])
    test = _images(4, seed=8)
    want, = qrt.InferenceSession(q_original.model).run(None, {"input": _by_hand(test)})
    got, = qrt.InferenceSession(q_embedded.model).run(None, {"input": test})
    got_ort, = _ort(q_embedded.model).run(None, {"input": test})
    out_scale = _output_scale(q_original.model)
    assert np.abs(got - want).max() <= out_scale * 1.0001
    assert np.abs(got_ort - want).max() <= out_scale * 1.0001


def _output_scale(model):
    """Scale of the QuantizeLinear that produces the int8 version of the graph output."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    out = model.graph.output[0].name
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer[out]
    assert node.op_type == "DequantizeLinear", node.op_type
    return float(inits[node.input[1]])


def test_embedding_twice_is_refused(embedded):
    with pytest.raises(InvalidModel, match="already embedded"):
        embed_preprocessing(embedded)


def test_bad_arguments_get_clear_errors():
    with pytest.raises(InvalidArgument, match="mean has 2 values"):
        embed_preprocessing(classic_cnn(), mean=[0.5, 0.5])
    with pytest.raises(InvalidArgument, match="layout"):
        embed_preprocessing(classic_cnn(), layout="HWC")
    with pytest.raises(InvalidModel, match="opset 11"):
        embed_preprocessing(classic_cnn(opset=10), resize=(32, 32))


def test_image_file_feed_applies_nothing_twice(embedded, tmp_path):
    from PIL import Image
    rgb = _images(1, seed=3)[0]
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    feed = image_feed(str(path), embedded)
    # Decoded only: BGR as the record says, batch of one, uint8; no scaling or normalisation.
    np.testing.assert_array_equal(feed["input"], rgb[None, ..., ::-1])
    got, = qrt.InferenceSession(embedded).run(None, feed)
    want, = qrt.InferenceSession(classic_cnn()).run(None, {"input": _by_hand(rgb[None, ..., ::-1])})
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    with pytest.raises(InvalidArgument, match="no embedded preprocessing"):
        image_feed(str(path), classic_cnn())


def test_cli_preprocess_then_run_with_image(tmp_path, capsys):
    from PIL import Image
    from qrt.cli import main
    src, dst = tmp_path / "m.onnx", tmp_path / "m.pre.onnx"
    onnx.save(classic_cnn(), src)
    before = src.read_bytes()
    assert main(["preprocess", str(src), str(dst), "--layout", "nhwc", "--bgr", "--resize", "32x32",
                 "--scale", "1/255", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]) == 0
    assert src.read_bytes() == before
    record = preprocessing_of(str(dst))
    assert record["resize"] == [32, 32] and record["std"] == STD and abs(record["scale"] - 1 / 255) < 1e-12
    Image.fromarray(_images(1, 50, 60)[0]).save(tmp_path / "x.jpg")
    capsys.readouterr()
    assert main(["run", str(dst), "--image", str(tmp_path / "x.jpg")]) == 0
    assert "output: float32[1, 10]" in capsys.readouterr().out
    assert main(["check", str(dst), "--image", str(tmp_path / "x.jpg")]) == 0


def test_cli_report_with_images(embedded, tmp_path, capsys):
    from PIL import Image
    from qrt.cli import main
    float_path, int8_path = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(embedded, float_path)
    images = _images(8, seed=11)
    qrt.quantize_static(str(float_path), str(int8_path), [{"input": images[i:i + 4]} for i in (0, 4)])
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(images[i]).save(paths[-1])
    capsys.readouterr()
    assert main(["report", str(float_path), str(int8_path), "--images", *paths, "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"samples\s+3\n", out) and "top-1 agree" in out


def _nhwc_cnn(opset):
    """classic_cnn behind a Transpose: the model itself takes NHWC float input (TensorFlow style)."""
    model = classic_cnn(opset=opset)
    model.graph.node.insert(0, onnx.helper.make_node("Transpose", ["input_nhwc"], ["input"], name="to_nchw",
                                                     perm=[0, 3, 1, 2]))
    model.graph.input[0].CopyFrom(onnx.helper.make_tensor_value_info("input_nhwc", onnx.TensorProto.FLOAT,
                                                                    ["batch_size", 32, 32, 3]))
    return model


@pytest.mark.parametrize("opset", [11, 18])
def test_model_taking_nhwc_with_resize(opset):
    """No Transpose is added; Resize sizes are built as [batch, H, W, channels] from the raw input's shape."""
    model = embed_preprocessing(_nhwc_cnn(opset), layout="NHWC", model_layout="NHWC", color="BGR", resize=(32, 32),
                                mean=MEAN, std=STD)
    assert "Transpose" not in [n.op_type for n in model.graph.node if n.name.startswith("qrt_preprocess/")]
    images = _images(2, 40, 24, seed=opset)
    got, = qrt.InferenceSession(model).run(None, {"input_nhwc": images})
    want, = _ort(model).run(None, {"input_nhwc": images})
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    same_size = _images(2, seed=opset)
    got, = qrt.InferenceSession(model).run(None, {"input_nhwc": same_size})
    want, = qrt.InferenceSession(classic_cnn(opset=opset)).run(None, {"input": _by_hand(same_size)})
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
