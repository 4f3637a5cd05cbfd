"""Remove nodes none of whose outputs reaches a graph output (ONNX nodes have no side effects)."""


def eliminate_deadend(graph):
    needed = set(graph.output_names) | graph.subgraph_refs
    dead = []
    for node in reversed(graph.sorted_nodes()):
        if any(name in needed for name in node.output if name):
            needed.update(graph.reads(node))
        else:
            dead.append(node)
    for node in dead:
        graph.remove_node(node)
    return len(dead)
