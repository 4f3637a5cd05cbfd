"""Preprocessing inside the model: the graph takes raw uint8 images, so training and serving cannot drift.

Converting a network to ONNX keeps the network, not the cast / layout / colour order / resize /
normalisation in front of it, and every client that re-implements those steps is a place for them to
differ. :func:`embed_preprocessing` prepends them as standard ONNX ops (Cast, Transpose, Gather for
the channel flip, Resize, Mul/Sub/Div), so the result runs in any ONNX runtime, and records what it
did in ``metadata_props["qrt.preprocessing"]`` (JSON). qrt reads that record to feed image files
without applying anything twice, and the quantizer keeps these nodes in float.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import InvalidArgument, InvalidModel
from .model import load_model, model_label

METADATA_KEY = "qrt.preprocessing"
_PREFIX = "qrt_preprocess/"
_INTERPOLATIONS = {"nearest", "linear", "cubic"}
_DTYPES = {"uint8": TensorProto.UINT8, "uint16": TensorProto.UINT16, "float32": TensorProto.FLOAT}


def _layout(value: str, what: str) -> str:
    layout = str(value).upper()
    if layout not in ("NHWC", "NCHW"):
        raise InvalidArgument(f"{what} must be 'NHWC' or 'NCHW', got {value!r}")
    return layout


def _color(value: str, what: str) -> str:
    color = str(value).upper()
    if color not in ("RGB", "BGR"):
        raise InvalidArgument(f"{what} must be 'RGB' or 'BGR', got {value!r}")
    return color


def _per_channel(value, channels: int, what: str):
    if value is None:
        return None
    values = [float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64))]
    if len(values) not in (1, channels):
        raise InvalidArgument(f"{what} has {len(values)} values; the image input has {channels} channels")
    return values * channels if len(values) == 1 else values


def preprocessing_of(model) -> dict | None:
    """The preprocessing record :func:`embed_preprocessing` left in ``model``, or None."""
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return None


def preprocessing_nodes(model: onnx.ModelProto) -> frozenset:
    """Names of the nodes :func:`embed_preprocessing` added (the quantizer keeps them in float)."""
    record = preprocessing_of(model)
    return frozenset(record["nodes"]) if record else frozenset()


def _rename_input(graph, old: str, new: str):
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                _rename_input(sub, old, new)
    for out in graph.output:
        if out.name == old:
            raise InvalidModel(f"input {old!r} is also a graph output; there is no network to preprocess for")


def embed_preprocessing(model, layout: str = "NHWC", color: str = "BGR", resize=None, scale: float = 1 / 255,
                        mean=None, std=None, input_dtype: str = "uint8", interpolation: str = "linear",
                        model_layout: str = "NCHW", model_color: str = "RGB",
                        input_name: str | None = None) -> onnx.ModelProto:
    """A copy of ``model`` whose image input takes raw images and does the preprocessing itself.

    The raw input keeps the original input's name and batch dim (symbolic stays symbolic). It is
    ``input_dtype`` in ``layout`` with channels in ``color`` order; the steps, in this order: Cast to
    float, Transpose to ``model_layout``, reverse the channels when ``color != model_color``, Resize
    to ``resize=(height, width)`` with ``interpolation`` (half-pixel coordinates, the convention of
    cv2.resize and torch's ``align_corners=False``; the raw height and width become free dims), Mul
    by ``scale``, Sub ``mean``, Div ``std`` (per channel, after scaling: ``(x * scale - mean) / std``),
    Cast to the original input type. ``model`` (path, bytes or ModelProto) is not modified.
    """
    proto = load_model(model)
    label = model_label(proto, model)
    if preprocessing_of(proto) is not None:
        raise InvalidModel(f"{label}: preprocessing is already embedded ({METADATA_KEY} metadata); "
                           f"embedding it again would apply it twice")
    layout, model_layout = _layout(layout, "layout"), _layout(model_layout, "model_layout")
    color, model_color = _color(color, "color"), _color(model_color, "model_color")
    if input_dtype not in _DTYPES:
        raise InvalidArgument(f"input_dtype must be one of {sorted(_DTYPES)}, got {input_dtype!r}")
    if interpolation not in _INTERPOLATIONS:
        raise InvalidArgument(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")

    initializers = {t.name for t in proto.graph.initializer}
    candidates = [i for i in proto.graph.input if i.name not in initializers]
    if input_name is not None:
        candidates = [i for i in candidates if i.name == input_name]
    image = next((i for i in candidates if len(i.type.tensor_type.shape.dim) == 4), None)
    if image is None:
        raise InvalidModel(f"{label}: no rank-4 image input" + (f" named {input_name!r}" if input_name else ""))
    elem_type = image.type.tensor_type.elem_type
    if elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
        raise InvalidModel(f"{label}: input {image.name!r} is not a float tensor; nothing to normalise")
    dims = list(image.type.tensor_type.shape.dim)
    channel_axis = 1 if model_layout == "NCHW" else 3
    spatial_axes = (2, 3) if model_layout == "NCHW" else (1, 2)
    channels = dims[channel_axis].dim_value
    if not channels:
        raise InvalidModel(f"{label}: input {image.name!r} has no fixed channel count at axis {channel_axis}; "
                           f"is model_layout={model_layout!r} right?")
    if color != model_color and channels != 3:
        raise InvalidArgument(f"{label}: a colour-order change needs 3 channels; input {image.name!r} has {channels}")
    mean = _per_channel(mean, channels, "mean")
    std = _per_channel(std, channels, "std")
    if std is not None and any(s == 0 for s in std):
        raise InvalidArgument("std has a zero entry")
    opset = next((imp.version for imp in proto.opset_import if imp.domain in ("", "ai.onnx")), 0)
    if resize is not None:
        resize = tuple(int(v) for v in resize)
        if len(resize) != 2 or min(resize) <= 0:
            raise InvalidArgument(f"resize must be (height, width), got {resize}")
        if opset < 11:
            raise InvalidModel(f"{label}: Resize with sizes needs opset 11; the model has opset {opset} "
                               f"(convert it first: qrt convert IN OUT --opset 13)")
        for axis, size in zip(spatial_axes, resize):
            if dims[axis].dim_value and dims[axis].dim_value != size:
                raise InvalidArgument(f"{label}: resize {resize} does not match input {image.name!r}'s fixed "
                                      f"size {[dims[a].dim_value for a in spatial_axes]}")

    internal = f"{image.name}_preprocessed"
    _rename_input(proto.graph, image.name, internal)
    nodes, inits = [], []
    current = image.name

    def step(op, inputs, **attrs):
        nonlocal current
        name = f"{_PREFIX}{op}_{len(nodes)}"
        out = f"{_PREFIX}{len(nodes)}_{op}"
        nodes.append(helper.make_node(op, [current] + inputs, [out], name=name, **attrs))
        current = out

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), f"{_PREFIX}{name}"))
        return f"{_PREFIX}{name}"

    step("Cast", [], to=TensorProto.FLOAT)
    if layout != model_layout:
        step("Transpose", [], perm=[0, 3, 1, 2] if model_layout == "NCHW" else [0, 2, 3, 1])
    if color != model_color:
        step("Gather", [const("reverse_channels", np.array([2, 1, 0], np.int64))], axis=channel_axis)
    if resize is not None:
        shape = f"{_PREFIX}shape"
        nodes.append(helper.make_node("Shape", [current], [shape], name=f"{_PREFIX}Shape"))
        # Batch and channels keep their sizes; the spatial dims take the target size.
        if model_layout == "NCHW":
            keep = f"{_PREFIX}kept_dims"
            nodes.append(helper.make_node("Slice", [shape, const("zero", np.array([0], np.int64)),
                                                    const("two", np.array([2], np.int64))], [keep],
                                          name=f"{_PREFIX}Slice"))
            sizes_parts = [keep, const("target_size", np.array(resize, np.int64))]
        else:
            first, last = f"{_PREFIX}batch", f"{_PREFIX}channels"
            nodes.append(helper.make_node("Gather", [shape, const("batch_axis", np.array([0], np.int64))], [first],
                                          name=f"{_PREFIX}GatherBatch"))
            nodes.append(helper.make_node("Gather", [shape, const("channel_axis", np.array([3], np.int64))], [last],
                                          name=f"{_PREFIX}GatherChannels"))
            sizes_parts = [first, const("target_size", np.array(resize, np.int64)), last]
        sizes = f"{_PREFIX}sizes"
        nodes.append(helper.make_node("Concat", sizes_parts, [sizes], name=f"{_PREFIX}Concat", axis=0))
        roi = const("roi", np.zeros(0, np.float32))
        scales = const("scales", np.zeros(0, np.float32))
        step("Resize", [roi, scales, sizes], mode=interpolation, coordinate_transformation_mode="half_pixel")
    shape = [1, channels, 1, 1] if model_layout == "NCHW" else [1, 1, 1, channels]
    if scale is not None and float(scale) != 1.0:
        step("Mul", [const("scale", np.array(float(scale), np.float32))])
    if mean is not None:
        step("Sub", [const("mean", np.array(mean, np.float32).reshape(shape))])
    if std is not None:
        step("Div", [const("std", np.array(std, np.float32).reshape(shape))])
    if elem_type != TensorProto.FLOAT:
        step("Cast", [], to=elem_type)
    nodes.append(helper.make_node("Identity", [current], [internal], name=f"{_PREFIX}Output"))

    raw_dims = []
    source = {"N": dims[0], "C": dims[channel_axis], "H": dims[spatial_axes[0]], "W": dims[spatial_axes[1]]}
    for letter in layout:
        d = onnx.TensorShapeProto.Dimension()
        if letter in "HW" and resize is not None:
            d.dim_param = f"{image.name}_{'height' if letter == 'H' else 'width'}"
        else:
            d.CopyFrom(source[letter])
        raw_dims.append(d)
    image.type.tensor_type.elem_type = _DTYPES[input_dtype]
    del image.type.tensor_type.shape.dim[:]
    image.type.tensor_type.shape.dim.extend(raw_dims)

    body = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes + body)
    proto.graph.initializer.extend(inits)
    record = {"input": image.name, "layout": layout, "color": color, "input_dtype": input_dtype,
              "resize": list(resize) if resize else None, "interpolation": interpolation if resize else None,
              "scale": None if scale is None else float(scale), "mean": mean, "std": std,
              "model_layout": model_layout, "model_color": model_color, "nodes": [n.name for n in nodes]}
    proto.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=json.dumps(record)))
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:   # a qrt bug, not the user's: say so plainly
        raise InvalidModel(f"{label}: the model with embedded preprocessing fails onnx's checker: {exc}") from None
    return proto


def image_feed(path: str, model) -> dict:
    """``{input: array}`` for an image file and a model with embedded preprocessing (Pillow decodes it).

    Only decoding happens here: the image is handed over in the colour order, layout and dtype the
    record says the model takes, with a batch dim of 1; everything else is the model's job.
    """
    record = preprocessing_of(model)
    if record is None:
        raise InvalidArgument("the model has no embedded preprocessing (no qrt.preprocessing metadata), so qrt "
                              "cannot know how to turn an image into its input; embed it with `qrt preprocess`")
    try:
        from PIL import Image
    except ImportError:
        raise InvalidArgument("reading image files needs Pillow: pip install Pillow") from None
    try:
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read image {path!r}: {exc}") from None
    if record["color"] == "BGR":
        pixels = pixels[..., ::-1]
    if record["input_dtype"] != "uint8":
        pixels = pixels.astype(record["input_dtype"])
    batch = np.ascontiguousarray(pixels[None] if record["layout"] == "NHWC" else pixels.transpose(2, 0, 1)[None])
    return {record["input"]: batch}
