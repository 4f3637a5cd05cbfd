"""Plan-time transformer fusions, the ones onnxruntime's own optimizer makes, into com.microsoft ops.

* A LayerNormalization written out as ReduceMean, Sub, Pow (or Mul), ReduceMean, Add, Sqrt, Div, Mul
  and Add (exports from before opset 17) becomes one LayerNormalization node (below opset 17, the
  ai.onnx-domain contrib op onnxruntime keeps for such models, which qrt registers too).
* Add (+ a bias Add before it) -> LayerNormalization over the last axis of 3-D tensors becomes
  SkipLayerNormalization: the sum and the normalization in one pass per row.
* The attention pattern — per-head Reshape/Transpose of Q, K and V projections, MatMul, a scale
  (Mul or Div by a constant), an optional additive mask, Softmax over the keys, MatMul, and the
  Transpose/Reshape merging the heads — becomes MultiHeadAttention on the 3-D projections, run by
  qrt's fused attention kernel (BLAS products, masking and softmax in one pass per score row).
  A causal mask — a constant Add of <= -1e4 above the diagonal, or a Where on a constant lower-triangular
  condition (torch's masked_fill) — becomes ``unidirectional=1`` instead of a bias input; a rotate-half
  rotary embedding written out over Q's or K's heads (Slice, Neg, Concat, Mul by cos and sin tables)
  becomes com.microsoft RotaryEmbedding on the 3-D projection, so decoder (Llama-style) blocks fuse too.
  Both need the sequence length as a number in the graph, equal to the constant mask's or tables' size.
* RMSNorm written out (x * x, ReduceMean, + eps, Sqrt, Div or Reciprocal and Mul, a gain Mul) becomes
  SimplifiedLayerNormalization, the ai.onnx-domain contrib op onnxruntime's optimizer emits.

onnxruntime runs all these ops, so a model saved after these fusions stays runnable there. Each matched
node's intermediate results must be read only inside the pattern, or the nodes stay as they are.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graphs import attr, consumers_by_name, names_read_by_subgraphs, splice_nodes

_MS = "com.microsoft"


class _Graph:
    """Lookups over one graph: producers, consumers, constants, element types and ranks."""

    def __init__(self, model):
        graph = model.graph
        self.graph = graph
        self.opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name}
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                value = attr(node, "value")
                if value is not None:
                    self.constants[node.output[0]] = numpy_helper.to_array(value)
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers = consumers_by_name(graph)
        self.protected = {o.name for o in graph.output} | names_read_by_subgraphs(graph)
        self.new_constants = []     # initializers the fused nodes read, added after splicing
        self.order = {id(n): i for i, n in enumerate(graph.node)}
        infos = list(graph.input) + list(graph.value_info) + list(graph.output)
        self.elem = {v.name: v.type.tensor_type.elem_type for v in infos}
        self.dims = {v.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                              for d in v.type.tensor_type.shape.dim]
                     for v in infos if v.type.tensor_type.HasField("shape")}

    def group_name(self, nodes):
        """A fused node's name: the names of the nodes it covers, in graph order, as profiles show them."""
        return "+".join(n.name for n in sorted(nodes, key=lambda n: self.order[id(n)]) if n.name)

    def node(self, name, op_type):
        """The producer of ``name`` if it is an ai.onnx ``op_type`` node, else None."""
        p = self.producer.get(name)
        return p if p is not None and p.op_type == op_type and p.domain in ("", "ai.onnx") else None

    def only_inside(self, nodes, last):
        """True when every output of ``nodes`` but ``last``'s is read only by ``nodes``."""
        ids = {id(n) for n in nodes}
        for n in nodes:
            if n is last:
                continue
            for out in n.output:
                if out in self.protected or any(id(c) not in ids for c in self.consumers.get(out, [])):
                    return False
        return True

    def is_float(self, name):
        return self.elem.get(name) == TensorProto.FLOAT or (
            name in self.constants and self.constants[name].dtype == np.float32)

    def scalar(self, name):
        value = self.constants.get(name)
        return float(value.reshape(())) if value is not None and value.size == 1 else None


def _skip_layer_norms(g, replaced, removed):
    for ln in g.graph.node:
        if ln.op_type != "LayerNormalization" or ln.domain not in ("", "ai.onnx") or id(ln) in removed:
            continue
        if any(o for o in ln.output[1:]) or len(ln.input) < 2:
            continue
        add = g.node(ln.input[0], "Add")
        rank = len(g.dims.get(ln.input[0], []))
        if add is None or rank != 3 or attr(ln, "axis", -1) not in (-1, 2) or attr(ln, "stash_type", 1) != 1:
            continue
        hidden = g.dims[ln.input[0]][2]
        params = [n for n in ln.input[1:] if n]
        if not all(n in g.constants and g.constants[n].shape == (hidden,) and g.is_float(n) for n in params):
            continue
        a, b = add.input
        if a in g.constants or b in g.constants or g.dims.get(a) != g.dims.get(b) or not g.is_float(a) \
                or not g.is_float(b):
            continue
        nodes = [add, ln]
        bias = ""
        for x, skip in ((a, b), (b, a)):
            # A bias Add feeding the sum (MatMul + bias + residual) folds in as the bias input.
            bias_add = g.node(x, "Add")
            if bias_add is None or bias_add.input[1] not in g.constants or id(bias_add) in removed:
                continue
            vec = g.constants[bias_add.input[1]]
            if vec.shape == (hidden,) and vec.dtype == np.float32 and g.only_inside([bias_add, add], add) \
                    and g.dims.get(bias_add.input[0]) == g.dims.get(x):
                nodes.insert(0, bias_add)
                a, b, bias = bias_add.input[0], skip, bias_add.input[1]
                break
        outputs = [ln.output[0]]
        if not g.only_inside([add, ln], ln):
            outputs += ["", "", add.output[0]]   # the sum is read elsewhere too: output 3 carries it
        inputs = [a, b, ln.input[1], ln.input[2] if len(ln.input) > 2 else "", bias]
        while inputs and not inputs[-1]:
            inputs.pop()
        fused = helper.make_node("SkipLayerNormalization", inputs, outputs, name=ln.name or add.name,
                                 domain=_MS, epsilon=float(attr(ln, "epsilon", 1e-5)))
        replaced[id(ln)] = fused
        removed.update(id(n) for n in nodes if n is not ln)


def _last_axis_mean(g, name):
    """The ReduceMean producing ``name`` if it averages its input over the last axis only, keeping dims."""
    r = g.node(name, "ReduceMean")
    if r is None or attr(r, "keepdims", 1) != 1:
        return None
    axes = attr(r, "axes")
    if axes is None and len(r.input) > 1 and r.input[1] in g.constants:
        axes = [int(a) for a in g.constants[r.input[1]].reshape(-1)]
    rank = len(g.dims.get(r.input[0], []))
    if axes is None or len(axes) != 1 or axes[0] not in (-1, rank - 1) or rank == 0:
        return None
    return r


def _operands(node, first):
    """``node``'s inputs with ``first`` first, or None when ``first`` is not one of them."""
    a, b = node.input
    return (a, b) if a == first else (b, a) if b == first else None


def _decomposed_layer_norms(g, replaced, removed):
    for sqrt in g.graph.node:
        if sqrt.op_type != "Sqrt" or sqrt.domain not in ("", "ai.onnx"):
            continue
        add_eps = g.node(sqrt.input[0], "Add")
        if add_eps is None:
            continue
        var_name, eps_name = add_eps.input if g.scalar(add_eps.input[1]) is not None else add_eps.input[::-1]
        epsilon = g.scalar(eps_name)
        var = _last_axis_mean(g, var_name)
        if epsilon is None or var is None:
            continue
        square = g.node(var.input[0], "Pow") or g.node(var.input[0], "Mul")
        if square is None:
            continue
        if square.op_type == "Pow" and g.scalar(square.input[1]) != 2.0 or \
                square.op_type == "Mul" and square.input[0] != square.input[1]:
            continue
        sub = g.node(square.input[0], "Sub")
        mean = _last_axis_mean(g, sub.input[1]) if sub is not None else None
        if mean is None or mean.input[0] != sub.input[0]:
            continue
        x = sub.input[0]
        divs = [c for c in g.consumers.get(sqrt.output[0], []) if c.op_type == "Div" and c.input[0] == sub.output[0]]
        if len(divs) != 1:
            continue
        div = divs[0]
        scale_mul = next(iter(g.consumers.get(div.output[0], [])), None)
        if scale_mul is None or scale_mul.op_type != "Mul":
            continue
        gamma = _operands(scale_mul, div.output[0])
        shift_add = next(iter(g.consumers.get(scale_mul.output[0], [])), None)
        if gamma is None or shift_add is None or shift_add.op_type != "Add":
            continue
        beta = _operands(shift_add, scale_mul.output[0])
        hidden = (g.dims.get(x) or [None])[-1]
        params = [gamma[1], beta[1]] if beta is not None else []
        if not params or not all(n in g.constants and g.constants[n].shape == (hidden,) and
                                 g.constants[n].dtype == np.float32 for n in params) or not g.is_float(x):
            continue
        nodes = [mean, sub, square, var, add_eps, sqrt, div, scale_mul, shift_add]
        if any(id(n) in removed or id(n) in replaced for n in nodes) or not g.only_inside(nodes, shift_add):
            continue
        fused = helper.make_node("LayerNormalization", [x, gamma[1], beta[1]], [shift_add.output[0]],
                                 name=shift_add.name or div.name, axis=-1, epsilon=epsilon)
        replaced[id(shift_add)] = fused
        removed.update(id(n) for n in nodes if n is not shift_add)


def _decomposed_rms_norms(g, replaced, removed):
    """x / Sqrt(ReduceMean(x * x | x ^ 2, last axis) + eps) (or x * Reciprocal(...)), times a constant gain
    vector when one follows, becomes SimplifiedLayerNormalization (a gain of ones when none does)."""
    for sqrt in g.graph.node:
        if sqrt.op_type != "Sqrt" or sqrt.domain not in ("", "ai.onnx") or id(sqrt) in removed:
            continue
        add_eps = g.node(sqrt.input[0], "Add")
        if add_eps is None:
            continue
        ms_name, eps_name = add_eps.input if g.scalar(add_eps.input[1]) is not None else add_eps.input[::-1]
        epsilon, mean_square = g.scalar(eps_name), _last_axis_mean(g, ms_name)
        square = mean_square and (g.node(mean_square.input[0], "Pow") or g.node(mean_square.input[0], "Mul"))
        if epsilon is None or square is None or not g.is_float(eps_name) or \
                (g.scalar(square.input[1]) != 2.0 if square.op_type == "Pow" else square.input[0] != square.input[1]):
            continue
        x = square.input[0]
        readers = g.consumers.get(sqrt.output[0], [])
        nodes = [square, mean_square, add_eps, sqrt]
        if len(readers) == 1 and readers[0].op_type == "Div" and list(readers[0].input) == [x, sqrt.output[0]]:
            normed = readers[0]
        elif len(readers) == 1 and readers[0].op_type == "Reciprocal":
            nodes.append(readers[0])
            after = g.consumers.get(readers[0].output[0], [])
            normed = after[0] if len(after) == 1 and after[0].op_type == "Mul" and \
                _operands(after[0], x) is not None and _operands(after[0], x)[1] == readers[0].output[0] else None
        else:
            normed = None
        hidden = (g.dims.get(x) or [None])[-1]
        if normed is None or not isinstance(hidden, int) or hidden <= 0 or not g.is_float(x):
            continue
        nodes.append(normed)
        last, gain = normed, None
        after = g.consumers.get(normed.output[0], [])
        if len(after) == 1 and after[0].op_type == "Mul" and normed.output[0] not in g.protected:
            other = _operands(after[0], normed.output[0])[1]
            value = g.constants.get(other)
            if value is not None and value.shape == (hidden,) and value.dtype == np.float32:
                last, gain = after[0], other
                nodes.append(last)
        if any(id(n) in removed or id(n) in replaced for n in nodes) or not g.only_inside(nodes, last):
            continue
        if gain is None:
            gain = f"{last.output[0]}/gain"
            g.new_constants.append(numpy_helper.from_array(np.ones(hidden, np.float32), gain))
        replaced[id(last)] = helper.make_node("SimplifiedLayerNormalization", [x, gain], [last.output[0]],
                                              name=g.group_name(nodes), axis=-1, epsilon=epsilon)
        removed.update(id(n) for n in nodes if n is not last)


def _split_heads(g, name, perm):
    """(projection, heads, head_size, nodes) when ``name`` is Transpose(perm)(Reshape(x, [*, *, N, D]))."""
    t = g.node(name, "Transpose")
    if t is None or list(attr(t, "perm", [])) != perm:
        return None
    r = g.node(t.input[0], "Reshape")
    if r is None or attr(r, "allowzero", 0) or r.input[1] not in g.constants:
        return None
    shape = [int(d) for d in g.constants[r.input[1]].reshape(-1)]
    source = r.input[0]
    if len(shape) != 4 or shape[2] <= 0 or shape[3] <= 0 or len(g.dims.get(source, [])) != 3:
        return None
    hidden = g.dims[source][2]
    batch, seq = g.dims[source][:2]
    if hidden != shape[2] * shape[3] or shape[0] not in (0, -1, batch) or not g.is_float(source) or \
            shape[1] not in (0, seq) and not (shape[1] == -1 and shape[0] != -1):
        return None
    return source, shape[2], shape[3], [t, r]


# A mask entry at or below this hides its key: exp(score + mask - peak) underflows to 0 in float32
# whenever a row's scores spread less than ~1e4 - 104, so such masks equal causal masking.
_MASKED = -1e4


def _static_seq(g, name):
    """The sequence length (axis 1) of a 3-D ``name`` when its shape gives it as a number, else None."""
    dims = g.dims.get(name, [])
    return dims[1] if len(dims) == 3 and isinstance(dims[1], int) and dims[1] > 0 else None


def _square(array, seq):
    """``array`` as a (seq, seq) matrix when it is one behind leading 1-axes, else None."""
    if array is None or array.ndim < 2 or any(d != 1 for d in array.shape[:-2]) or array.shape[-2:] != (seq, seq):
        return None
    return array.reshape(seq, seq)


def _causal_mask(g, node, scores, seq):
    """True when ``node`` (an Add of a constant or a Where on a constant condition, reading ``scores``)
    hides exactly the keys after each query of a ``seq``-long self-attention: the causal mask."""
    upper = np.triu(np.ones((seq, seq), bool), k=1)
    if node.op_type == "Add":
        mask = _square(g.constants.get(_operands(node, scores)[1]), seq)
        return mask is not None and mask.dtype == np.float32 and not mask[~upper].any() and \
            bool(np.all(mask[upper] <= _MASKED))
    cond, x, y = node.input
    condition = _square(g.constants.get(cond), seq)
    if condition is None or condition.dtype != np.bool_:
        return False
    if x == scores and y != scores:
        keep, fill = condition, g.scalar(y)
    elif y == scores and x != scores:
        keep, fill = ~condition, g.scalar(x)
    else:
        return False
    return fill is not None and fill <= _MASKED and g.is_float(x if y == scores else y) and \
        np.array_equal(keep, ~upper)


def _rotary_heads(g, name):
    """When ``name`` is the rotate-half rotary embedding written out (x * cos + Concat(-x2, x1) * sin) over
    split heads x of a projection whose sequence length is the tables' row count: (projection, heads,
    head_size, covered nodes, RotaryEmbedding node, the Add it replaces, its new initializers, ids of the
    covered nodes). The com.microsoft RotaryEmbedding node reads the 3-D projection from position 0 and
    writes x + "/rotary", still (B, S, heads * D)."""
    add = g.node(name, "Add")
    if add is None:
        return None
    for x_mul_name, rot_mul_name in (add.input, add.input[::-1]):
        x_mul, rot_mul = g.node(x_mul_name, "Mul"), g.node(rot_mul_name, "Mul")
        if x_mul is None or rot_mul is None:
            continue
        for x, cos in (x_mul.input, x_mul.input[::-1]):
            heads = _split_heads(g, x, [0, 2, 1, 3])
            if heads is None or cos not in g.constants:
                continue
            for rotated, sin in (rot_mul.input, rot_mul.input[::-1]):
                concat = g.node(rotated, "Concat")
                if concat is None or sin not in g.constants or len(concat.input) != 2 or \
                        attr(concat, "axis") not in (-1, 3):
                    continue
                found = _rotate_half(g, concat, x, heads, cos, sin)
                if found is not None:
                    source, num_heads, depth, nodes, inputs, tables = found
                    nodes += [x_mul, rot_mul, concat, add]
                    rotary = helper.make_node("RotaryEmbedding", inputs, [f"{x}/rotary"], domain=_MS,
                                              name=g.group_name(nodes) or f"{x}/rotary", num_heads=num_heads)
                    return source, num_heads, depth, nodes, rotary, add, tables, {id(n) for n in nodes}
    return None


def _half_slice(g, name, x, start, end, depth):
    """The Slice producing ``name`` if it is x[..., start:end] (an end past ``depth`` counts as ``depth``)."""
    s = g.node(name, "Slice")
    if s is None or s.input[0] != x or len(s.input) < 4 or not s.input[3] or \
            any(i not in g.constants for i in s.input[1:] if i) or len(s.input) > 4 and s.input[4] and \
            [int(v) for v in g.constants[s.input[4]].reshape(-1)] != [1]:
        return None
    starts, ends, axes = ([int(v) for v in g.constants[i].reshape(-1)] for i in s.input[1:4])
    if starts != [start] or axes not in ([-1], [3]) or len(ends) != 1 or ends[0] != end and \
            not (end == depth and ends[0] >= depth):
        return None
    return s


def _rotate_half(g, concat, x, heads, cos_name, sin_name):
    source, num_heads, depth, split_nodes = heads
    half = depth // 2
    seq = _static_seq(g, source)
    neg = g.node(concat.input[0], "Neg")
    if depth % 2 or seq is None or neg is None:
        return None
    second = _half_slice(g, neg.input[0], x, half, depth, depth)
    first = _half_slice(g, concat.input[1], x, 0, half, depth)
    caches = []
    for name in (cos_name, sin_name):
        table = g.constants[name]
        if table.dtype != np.float32 or table.ndim < 2 or any(d != 1 for d in table.shape[:-2]) or \
                table.shape[-2:] != (seq, depth):
            return None
        table = table.reshape(seq, depth)
        if not np.array_equal(table[:, :half], table[:, half:]):
            return None
        caches.append(table[:, :half])
    if first is None or second is None:
        return None
    prefix = f"{x}/rotary"
    inputs = [source, f"{prefix}/start", f"{prefix}/cos", f"{prefix}/sin"]
    tables = [numpy_helper.from_array(np.zeros(1, np.int64), inputs[1]),
              numpy_helper.from_array(np.ascontiguousarray(caches[0]), inputs[2]),
              numpy_helper.from_array(np.ascontiguousarray(caches[1]), inputs[3])]
    return source, num_heads, depth, split_nodes + [first, second, neg], inputs, tables


def _attentions(g, replaced, removed, broadcast_masks):
    for merge in g.graph.node:
        if merge.op_type != "Reshape" or merge.domain not in ("", "ai.onnx") or id(merge) in removed:
            continue
        ctx_t = g.node(merge.input[0], "Transpose")
        if ctx_t is None or list(attr(ctx_t, "perm", [])) != [0, 2, 1, 3] or attr(merge, "allowzero", 0):
            continue
        pv = g.node(ctx_t.input[0], "MatMul")
        softmax = g.node(pv.input[0], "Softmax") if pv is not None else None
        if softmax is None or attr(softmax, "axis", -1 if g.opset >= 13 else 1) not in (-1, 3):
            continue
        nodes = [merge, ctx_t, pv, softmax]
        scores, mask = softmax.input[0], ""
        add = g.node(scores, "Add")
        where = g.node(scores, "Where")
        if where is not None:
            # Only a causal mask (checked below, once the sequence length is known) fuses from a Where.
            inputs = [i for i in where.input[1:] if i not in g.constants]
            if len(inputs) != 1:
                continue
            scores = inputs[0]
            nodes.append(where)
        elif add is not None:
            scores, mask = add.input
            if g.node(scores, "MatMul") is None and g.node(scores, "Mul") is None and g.node(scores, "Div") is None:
                scores, mask = mask, scores
            nodes.append(add)
            if not g.is_float(mask):
                continue
        mask_input = scores
        scale = 1.0
        scaled = g.node(scores, "Mul") or g.node(scores, "Div")
        if scaled is not None:
            a, b = scaled.input
            if g.scalar(b) is None and scaled.op_type == "Mul":
                a, b = b, a
            value = g.scalar(b)
            if value is None or not g.is_float(b):
                continue
            scale = value if scaled.op_type == "Mul" else float(np.float32(1.0) / np.float32(value))
            scores = a
            nodes.append(scaled)
        qk = g.node(scores, "MatMul")
        if qk is None:
            continue
        nodes.append(qk)
        q = _split_heads(g, qk.input[0], [0, 2, 1, 3]) or _rotary_heads(g, qk.input[0])
        k = _split_heads(g, qk.input[1], [0, 2, 3, 1])
        if k is None:
            kt = g.node(qk.input[1], "Transpose")
            if kt is not None and list(attr(kt, "perm", [])) == [0, 1, 3, 2]:
                k = _split_heads(g, kt.input[0], [0, 2, 1, 3]) or _rotary_heads(g, kt.input[0])
                if k is not None:
                    k = (*k[:3], k[3] + [kt], *k[4:])
        v = _split_heads(g, pv.input[1], [0, 2, 1, 3])
        if q is None or k is None or v is None or len({q[1], k[1], v[1]}) != 1 or q[2] != k[2]:
            continue
        seq = _static_seq(g, q[0])
        mask_node = where if where is not None else add
        causal = seq is not None and seq == _static_seq(g, k[0]) and mask_node is not None and \
            _causal_mask(g, mask_node, mask_input, seq)
        if causal:
            mask = ""
        elif where is not None:
            continue
        shape = [int(d) for d in g.constants.get(merge.input[1], np.zeros(0)).reshape(-1)]
        if len(shape) != 3 or shape[2] not in (-1, q[1] * v[2]) or shape[0] not in (0, -1) and shape[0] <= 0:
            continue
        if mask and not broadcast_masks:
            mask_dims = g.dims.get(mask) or g.constants.get(mask, np.zeros(0)).shape
            if len(mask_dims) != 4 or mask_dims[2] == 1 or mask_dims[2] != g.dims[q[0]][1]:
                continue
        nodes += q[3] + k[3] + v[3]
        if len({id(n) for n in nodes}) != len(nodes) or any(id(n) in removed for n in nodes) \
                or not g.only_inside(nodes, merge):
            continue
        # A rotary embedding takes the place of its last node (the Add) in the graph's order.
        sources, in_rotary = [], set()
        for found in (q, k):
            if len(found) > 4:
                rotary, last, tables, covered = found[4:]
                in_rotary |= covered
                replaced[id(last)] = rotary
                g.new_constants += tables
                sources.append(rotary.output[0])
            else:
                sources.append(found[0])
        fused = helper.make_node("MultiHeadAttention", [*sources, v[0], "", "", mask] if mask else
                                 [*sources, v[0]], [merge.output[0]],
                                 name=g.group_name([n for n in nodes if id(n) not in in_rotary]),
                                 domain=_MS, num_heads=q[1], scale=float(scale),
                                 **({"unidirectional": 1} if causal else {}))
        replaced[id(merge)] = fused
        removed.update(id(n) for n in nodes if n is not merge and id(n) not in replaced)


def fuse_transformer(model: onnx.ModelProto, broadcast_masks: bool = False) -> onnx.ModelProto:
    """Return a copy of ``model`` with SkipLayerNormalization and MultiHeadAttention fused in (float32).

    onnxruntime's MultiHeadAttention takes ``attention_bias`` of shape (B | 1, heads | 1, S, L) only;
    ``broadcast_masks`` also fuses masks broadcast along the query axis (BERT's (B, 1, 1, L)), which
    qrt's kernel runs but onnxruntime rejects: for models that are qrt-only anyway.
    """
    g = _Graph(model)
    replaced, removed = {}, set()
    _decomposed_layer_norms(g, replaced, removed)
    _decomposed_rms_norms(g, replaced, removed)
    if replaced:
        model = splice_nodes(model, replaced, removed)
        model.graph.initializer.extend(g.new_constants)
        g = _Graph(model)
    replaced, removed = {}, set()
    _attentions(g, replaced, removed, broadcast_masks)
    _skip_layer_norms(g, replaced, removed)
    if not replaced:
        return model
    model = splice_nodes(model, replaced, removed, _MS)
    model.graph.initializer.extend(g.new_constants)
    return model
