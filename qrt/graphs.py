"""Graph-structure helpers every layer shares: subgraph scoping and the stable topological order.

This module imports nothing from qrt, so the loader (qrt.model), the planner (qrt.plan), the
optimizer and the quantizer can all use it without an import cycle.
"""
from __future__ import annotations

import heapq

import onnx
from onnx import helper


def attr(node, name, default=None):
    """The value of ``node``'s attribute ``name``, or ``default`` when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def consumers_by_name(graph_proto):
    """Tensor name -> the nodes of ``graph_proto`` reading it, in graph order (once per read)."""
    consumers: dict[str, list] = {}
    for node in graph_proto.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def names_read_by_subgraphs(graph_proto):
    """Every outer-scope name the subgraphs of ``graph_proto``'s nodes read, nested subgraphs included:
    what a rewrite of the outer graph must leave in place."""
    reads = set()
    for node in graph_proto.node:
        reads |= node_subgraph_free_names(node)
    return reads


def node_subgraphs(node):
    """The subgraphs a node carries in its GRAPH and GRAPHS attributes (If branches, Loop/Scan bodies)."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def subgraph_free_names(graph_proto):
    """Names a subgraph reads from enclosing scopes (recursively through nested subgraphs)."""
    defined = {i.name for i in graph_proto.input} | {t.name for t in graph_proto.initializer}
    defined |= {t.values.name for t in graph_proto.sparse_initializer}
    used = set()
    for node in graph_proto.node:
        defined.update(node.output)
        used.update(node.input)
        used |= node_subgraph_free_names(node)
    used.update(o.name for o in graph_proto.output)
    return used - defined - {""}


def node_subgraph_free_names(node):
    """Outer-scope names the node's subgraphs read."""
    names = set()
    for g in node_subgraphs(node):
        names |= subgraph_free_names(g)
    return names


def stable_topological_order(deps):
    """Kahn's order over positions ``0..len(deps)-1``, where ``deps[i]`` holds the positions node ``i``
    reads from (``i`` itself ignored). Among ready nodes the lowest position goes first, so an
    already sorted list keeps its order. Nodes on or behind a cycle are left out: a result shorter
    than ``deps`` means the graph has a cycle, and the missing positions are the stuck nodes."""
    waiting = [0] * len(deps)
    dependents = [[] for _ in deps]
    for pos, reads in enumerate(deps):
        reads = set(reads) - {pos}
        waiting[pos] = len(reads)
        for d in reads:
            dependents[d].append(pos)
    ready = [pos for pos, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        pos = heapq.heappop(ready)
        order.append(pos)
        for nxt in dependents[pos]:
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                heapq.heappush(ready, nxt)
    return order


def splice_nodes(model, replaced, removed, domain=None):
    """A copy of ``model`` where each node whose ``id`` is a key of ``replaced`` is swapped for its
    value and the nodes whose ids are in ``removed`` are dropped, finished by :func:`prune_after_rewrite`
    (the names only dropped nodes produced count as dropped)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    gone = set()
    for node in model.graph.node:
        if id(node) in replaced:
            result.graph.node.append(replaced[id(node)])
            gone.update(node.output)
        elif id(node) in removed:
            gone.update(node.output)
        else:
            result.graph.node.append(node)
    gone -= {o for n in result.graph.node for o in n.output}
    used = ({i for n in result.graph.node for i in n.input} | {o.name for o in model.graph.output}
            | names_read_by_subgraphs(result.graph))
    prune_after_rewrite(result, used, gone, domain)
    return result


def prune_after_rewrite(model, used, dropped, domain=None):
    """Finish a fusion pass on ``model`` in place: drop initializers nothing in ``used`` reads (graph
    inputs stay listed), value_info of ``dropped`` names no longer read, and import ``domain``."""
    graph = model.graph
    listed = {i.name for i in graph.input}
    initializers = [t for t in graph.initializer if t.name in used or t.name in listed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    info = [v for v in graph.value_info if v.name not in dropped or v.name in used]
    del graph.value_info[:]
    graph.value_info.extend(info)
    if domain is not None and not any(i.domain == domain for i in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, 1))
