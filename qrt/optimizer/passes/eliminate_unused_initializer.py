"""Remove initializers that no node, subgraph or graph output reads.

An initializer that is also a graph input is an overridable default from IR 4 on, part of the
model's interface, so it stays; below IR 4 every weight is listed as an input and both go together.
"""


def eliminate_unused_initializer(graph):
    changed = 0
    for name in list(graph.initializers):
        if graph.is_read(name) or graph.is_protected(name):
            continue
        if graph.is_graph_input(name) and graph.ir_version >= 4:
            continue
        graph.remove_initializer(name)
        changed += 1
    return changed
