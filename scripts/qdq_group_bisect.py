"""Which QDQ groups of an int8 model do qrt, onnxruntime and the ONNX spec compute differently?

    PYTHONPATH=. python scripts/qdq_group_bisect.py model_qdq.onnx feeds.npz [--all]

The model is run once in qrt with ``enable_qdq_integer_execution = False`` (the groups run literally)
with every QuantizeLinear output exposed, to get each group's int8 inputs. Then each group, from the
int8 tensors its DequantizeLinear nodes read to its QuantizeLinear output (float nodes between them
included), is cut out and run on those same inputs in qrt (integer execution on and off), in
onnxruntime (ORT_ENABLE_ALL, which fuses the group to its integer kernels, and ORT_DISABLE_ALL) and in
onnx.reference, the spec: dequantize, float op, quantize, literally. Isolating groups this way shows
each runtime's own differences from the spec, which a whole-model comparison hides under what earlier
differences propagate (in a badly conditioned model one flipped element upstream changes most of
the last layers).

Printed per group that any runtime computes differently from the spec: op type, output, and per
runtime ``elements differing / most steps apart``. ``--all`` prints the agreeing groups too.
"""
import argparse
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
from onnx import utils
from onnx.reference import ReferenceEvaluator

import qrt

RUNTIMES = ("qrt_integer", "qrt_literal", "ort_all", "ort_disabled")


def _qrt(model, feed, integer):
    options = qrt.SessionOptions()
    options.enable_qdq_integer_execution = integer
    return qrt.InferenceSession(model.SerializeToString(), sess_options=options).run(None, feed)


def _ort(model, feed, level):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feed)


def _spec(model, feed):
    # onnx.reference implements DequantizeLinear from opset 19; int8 semantics are unchanged since 13.
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for opset in copy.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < 21:
            opset.version = 21
    return ReferenceEvaluator(copy).run(None, feed)


def quantized_tensors(model, feed):
    """Every QuantizeLinear output of ``model`` run literally in qrt: name -> array."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    names = [n.output[0] for n in exposed.graph.node if n.op_type == "QuantizeLinear"]
    exposed.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    outputs = [o.name for o in exposed.graph.output]
    return dict(zip(outputs, _qrt(exposed, feed, integer=False)))


def groups(model):
    """(QuantizeLinear output, the op before it, the int8 tensors the group dequantizes)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    constants = {i.name for i in model.graph.initializer}
    for q in model.graph.node:
        op = producer.get(q.input[0]) if q.op_type == "QuantizeLinear" else None
        if op is None or op.op_type == "DequantizeLinear":
            continue
        inputs, pending, seen = [], [op], set()
        while pending:
            node = pending.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            for name in node.input:
                source = producer.get(name)
                if source is None:
                    continue
                if source.op_type != "DequantizeLinear":
                    pending.append(source)
                elif source.input[0] not in constants and source.input[0] not in inputs:
                    inputs.append(source.input[0])
        if inputs:
            yield q.output[0], op.op_type, inputs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("feeds", help=".npz with one array per graph input")
    parser.add_argument("--all", action="store_true", help="print the groups every runtime agrees on too")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    model = onnx.shape_inference.infer_shapes(onnx.load(args.model))
    feed = dict(np.load(args.feeds))
    tensors = quantized_tensors(model, feed)
    extractor = utils.Extractor(model)
    print(f"{'op':18s} {'output':55s} " + " ".join(f"{r:>14s}" for r in RUNTIMES))
    for output, op_type, inputs in groups(model):
        if any(name not in tensors for name in inputs):
            continue    # a group reading a graph input: nothing upstream to isolate it from
        group = extractor.extract_model(inputs, [output])
        group_feed = {name: tensors[name] for name in inputs}
        spec = _spec(group, group_feed)[0].astype(np.int64)
        results = {"qrt_integer": _qrt(group, group_feed, True)[0], "qrt_literal": _qrt(group, group_feed, False)[0],
                   "ort_all": _ort(group, group_feed, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)[0],
                   "ort_disabled": _ort(group, group_feed, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)[0]}
        cells = {}
        for runtime, value in results.items():
            steps = np.abs(value.astype(np.int64) - spec)
            cells[runtime] = f"{int((steps > 0).sum())}/{int(steps.max(initial=0))}"
        if args.all or any(c != "0/0" for c in cells.values()):
            print(f"{op_type:18s} {output:55s} " + " ".join(f"{cells[r]:>14s}" for r in RUNTIMES), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
