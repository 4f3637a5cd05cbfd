"""Remove Dropout nodes, which are the identity at inference.

A Dropout stays when it may be in training mode (opset >= 12 ``training_mode`` input that is not a
constant False; opset < 7 ``is_test=0``) or when its ``mask`` output is read.
"""
from ..graph import attr, is_op


def _in_inference_mode(graph, node):
    if graph.opset() < 7:
        return attr(node, "is_test", 0) != 0
    if len(node.input) > 2 and node.input[2]:
        training = graph.constant(node.input[2])
        return training is not None and training.size == 1 and not bool(training.reshape(-1)[0])
    return True


def eliminate_dropout(graph):
    changed = 0
    for node in graph.live_nodes():
        if not is_op(node, "Dropout") or not node.input or not node.input[0]:
            continue
        mask = node.output[1] if len(node.output) > 1 else ""
        if mask and graph.is_read(mask):
            continue
        if _in_inference_mode(graph, node):
            changed += graph.bypass(node, node.input[0], node.output[0])
    return changed
