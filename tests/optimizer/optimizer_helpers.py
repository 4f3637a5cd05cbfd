"""Building small graphs and checking optimized models against onnxruntime (the oracle)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import qrt.optimizer as opt

FLOAT = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, initializers=(), opset=17, ir_version=None, value_info=(),
               custom_domains=()):
    """A checked model. ``inputs``/``outputs``: (name, elem_type, shape) or ValueInfoProto;
    ``initializers``: {name: array} or TensorProtos."""
    def vi(x):
        return x if isinstance(x, onnx.ValueInfoProto) else helper.make_tensor_value_info(*x)

    if isinstance(initializers, dict):
        initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()]
    graph = helper.make_graph(list(nodes), "g", [vi(i) for i in inputs], [vi(o) for o in outputs],
                              list(initializers), value_info=[vi(v) for v in value_info])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in custom_domains]
    model = helper.make_model(graph, opset_imports=opsets)
    if ir_version is not None:
        model.ir_version = ir_version
    if any(not o.type.tensor_type.HasField("shape") for o in model.graph.output):
        # Outputs given without a shape take the one shape inference finds (the checker wants one).
        inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(model).graph.output}
        for o in model.graph.output:
            if not o.type.tensor_type.HasField("shape"):
                o.CopyFrom(inferred[o.name])
    onnx.checker.check_model(model)
    return model


def ops(model):
    return Counter(n.op_type for n in model.graph.node)


def session(model):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(model, feeds):
    sess = session(model)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def random_feeds(model, rng, dims=None):
    """Standard-normal float feeds for every graph input without an initializer."""
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (dims or {}).get(d.dim_param, 2)
                 for d in tt.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def assert_same_outputs(before, after, feeds, rtol=1e-5, exact=False):
    """Both models in onnxruntime give the same outputs (same names, dtypes, shapes).

    ``rtol`` is relative to each output's largest magnitude (|a - b| <= rtol * max|ref| per
    element): fused arithmetic reassociates sums, and elements that cancel to near zero can differ
    in relative terms far more than the output as a whole. ``exact`` asserts bit equality.
    """
    want, got = run(before, feeds), run(after, feeds)
    assert list(want) == list(got)
    for name in want:
        w, g = want[name], got[name]
        assert w.dtype == g.dtype and w.shape == g.shape, name
        if exact:
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            scale = float(np.max(np.abs(w))) if w.size else 0.0
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale, err_msg=name)
    return want


def optimize_checked(model, passes):
    """Optimize with ``passes``, check the result is valid ONNX with the same interface, and that
    the input model was not modified."""
    original = model.SerializeToString()
    optimized = opt.optimize(model, passes=passes)
    assert model.SerializeToString() == original, "optimize modified its input model"
    onnx.checker.check_model(optimized, full_check=True)
    assert [i.name for i in optimized.graph.input] == [i.name for i in model.graph.input]
    assert [o.SerializeToString() for o in optimized.graph.output] == \
        [o.SerializeToString() for o in model.graph.output]
    assert list(optimized.opset_import) == list(model.opset_import)
    return optimized
