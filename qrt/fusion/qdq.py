"""QDQ groups to integer ops: ``DequantizeLinear -> op -> QuantizeLinear`` becomes one QLinear op.

A QDQ model simulates quantization in float: every quantized tensor is dequantized before the float
op and the result quantized again. :func:`fuse_qdq_groups` recognises those groups, as
onnxruntime's QDQ transformers do, and replaces each by the integer op computing the same thing,
so the model runs on the int8 kernels:

==============================  ===============================================================
group                           replacement
==============================  ===============================================================
Conv                            QLinearConv (per-channel weights, int32 bias)
MatMul                          QLinearMatMul (per-column constant weights or two activations)
Gemm                            com.microsoft QGemm (int32 C)
Add, Mul                        com.microsoft QLinearAdd, QLinearMul
AveragePool, GlobalAveragePool  com.microsoft QLinearAveragePool, QLinearGlobalAveragePool
Sigmoid, LeakyRelu, Relu        com.microsoft QLinearSigmoid, QLinearLeakyRelu (Relu: alpha 0)
Softmax                         com.microsoft QLinearSoftmax
Concat                          com.microsoft QLinearConcat, or Concat if all scales agree
MaxPool, Reshape, Transpose,    the same op on the quantized tensor, when input and output
Flatten, Squeeze, Unsqueeze,    share scale and zero point (they only move or select values,
Slice, Gather, Split, Resize    and quantize(dequantize(v)) == v)
(nearest), Pad, Identity,
DepthToSpace, SpaceToDepth
==============================  ===============================================================

A Relu or Clip between the op and its QuantizeLinear is dropped when the quantization already
clamps to the same range (Relu with the zero point at the type's minimum).

Only exact rewrites are made: the integer op's result differs from the float simulation by at most
one quantization step, from float rounding in the simulation (the integer op is exact). That needs
constant per-tensor activation scales and zero points, constant 8-bit weights, and a bias either
already int32 with scale ``x_scale * w_scale`` or a float one whose rounding to that scale moves the
output by at most half a step (``x_scale * w_scale <= y_scale``). Anything else stays as it was.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graphs import attr

MS_DOMAIN = "com.microsoft"
_EIGHT_BIT = (np.dtype(np.uint8), np.dtype(np.int8))

_MOVEMENT = {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather",
             "Split", "Resize", "Pad", "Identity", "DepthToSpace", "SpaceToDepth"}


def fuse_qdq_groups(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every recognised QDQ group replaced by its integer op."""
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    _Fuser(fused).run()
    return fused


class _QParams:
    """A DequantizeLinear's or QuantizeLinear's constant parameters."""

    __slots__ = ("data", "scale", "zero", "dtype", "axis", "node", "scale_name", "zero_name")

    def __init__(self, node, data, scale, zero, dtype, axis, scale_name, zero_name):
        self.node, self.data, self.scale, self.zero = node, data, scale, zero
        self.dtype, self.axis = dtype, axis
        self.scale_name, self.zero_name = scale_name, zero_name

    @property
    def per_tensor(self):
        return self.scale.size == 1

    def same_as(self, other):
        return (self.dtype == other.dtype and self.per_tensor and other.per_tensor
                and np.float32(self.scale.reshape(-1)[0]) == np.float32(other.scale.reshape(-1)[0])
                and int(self.zero.reshape(-1)[0]) == int(other.zero.reshape(-1)[0]))


class _Fuser:
    def __init__(self, model):
        self.model = model
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.constants = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.name == "value":
                        self.constants[node.output[0]] = numpy_helper.to_array(a.t)
        self.graph_outputs = {o.name for o in self.graph.output}
        self.new_inits = []
        self.used_ms = False
        self._names = set(self.constants) | {o for n in self.graph.node for o in n.output}
        self._counter = 0

    # ---------------------------------------------------------------- graph queries

    def _index(self):
        self.producer = {}
        self.consumers = defaultdict(list)
        for node in self.graph.node:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)

    def _qparams(self, node):
        """Constant parameters of a (De)QuantizeLinear node in ai.onnx, or None."""
        if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in ("DequantizeLinear",
                                                                                      "QuantizeLinear"):
            return None
        if attr(node, "block_size", 0):
            return None
        if len(node.input) < 2 or node.input[1] not in self.constants:
            return None
        scale = np.asarray(self.constants[node.input[1]])
        if scale.dtype != np.float32 or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            return None
        zero_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        if zero_name and zero_name not in self.constants:
            return None
        if node.op_type == "DequantizeLinear":
            data = node.input[0]
            dtype = (np.asarray(self.constants[zero_name]).dtype if zero_name
                     else (self.constants[data].dtype if data in self.constants else None))
            if dtype is None:
                return None         # a run-time input without zero point: its type is unknown here
        else:
            data = node.output[0]
            out_dtype = attr(node, "output_dtype", 0)
            dtype = (np.asarray(self.constants[zero_name]).dtype if zero_name
                     else (np.dtype(helper.tensor_dtype_to_np_dtype(out_dtype)) if out_dtype else np.dtype(np.uint8)))
        dtype = np.dtype(dtype)
        if dtype not in _EIGHT_BIT:
            return None
        zero = np.asarray(self.constants[zero_name]) if zero_name else np.zeros(scale.shape, dtype)
        if zero.shape != scale.shape and zero.size != scale.size:
            return None
        return _QParams(node, data, scale, zero, dtype, int(attr(node, "axis", 1)), node.input[1], zero_name)

    def _bias_dq(self, name):
        """(int32 values, scale) of a constant int32 tensor's DequantizeLinear with zero point 0."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            return None
        if node.input[0] not in self.constants or node.input[1] not in self.constants:
            return None
        values = np.asarray(self.constants[node.input[0]])
        scale = np.asarray(self.constants[node.input[1]])
        if values.dtype != np.int32 or scale.dtype != np.float32 or attr(node, "block_size", 0):
            return None
        if len(node.input) > 2 and node.input[2]:
            zero = self.constants.get(node.input[2])
            if zero is None or np.any(np.asarray(zero) != 0):
                return None
        if scale.size > 1 and (values.ndim != 1 or scale.size != values.size):
            return None
        return values, scale

    def _dq_of(self, name):
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        return self._qparams(node)

    def _sole_q_after(self, name, allow_activation=True):
        """The QuantizeLinear that alone consumes ``name`` (through a removable Relu/Clip), or None."""
        if name in self.graph_outputs:
            return None, None
        users = self.consumers.get(name, [])
        if len(users) != 1:
            return None, None
        user = users[0]
        activation = None
        if allow_activation and user.op_type in ("Relu", "Clip") and user.domain in ("", "ai.onnx"):
            activation = user
            out = user.output[0]
            if out in self.graph_outputs or len(self.consumers.get(out, [])) != 1:
                return None, None
            user = self.consumers[out][0]
        q = self._qparams(user) if user.op_type == "QuantizeLinear" else None
        if q is None or not q.per_tensor:
            return None, None
        if activation is not None and not self._activation_is_noop(activation, q):
            return None, None
        return q, activation

    def _activation_is_noop(self, node, q):
        qmin, qmax = _bounds(q.dtype)
        scale = float(q.scale.reshape(-1)[0])
        zero = int(q.zero.reshape(-1)[0])

        def quantized(v):
            return min(max(int(np.rint(np.float32(v) / np.float32(scale))) + zero, qmin), qmax)

        if node.op_type == "Relu":
            return zero == qmin
        lo, hi = self._clip_bounds(node)
        if lo is None:
            return False
        return quantized(lo) == qmin and quantized(hi) == qmax

    def _clip_bounds(self, node):
        if self.opset < 11:
            return attr(node, "min", -np.inf), attr(node, "max", np.inf)
        bounds = []
        for i, default in ((1, -np.inf), (2, np.inf)):
            if len(node.input) > i and node.input[i]:
                if node.input[i] not in self.constants:
                    return None, None
                bounds.append(float(np.asarray(self.constants[node.input[i]]).reshape(-1)[0]))
            else:
                bounds.append(default)
        return bounds

    # ---------------------------------------------------------------- emitting

    def _fresh(self, base):
        while True:
            self._counter += 1
            name = f"{base}_qdq{self._counter}"
            if name not in self._names:
                self._names.add(name)
                return name

    def _const(self, base, array):
        name = self._fresh(base)
        self.new_inits.append(numpy_helper.from_array(np.asarray(array), name))
        self.constants[name] = np.asarray(array)
        return name

    def _zero_name(self, p: _QParams, base):
        if p.zero_name:
            return p.zero_name
        return self._const(base + "_zero_point", np.zeros(p.scale.shape, p.dtype))

    # ---------------------------------------------------------------- driver

    def run(self):
        while True:
            self._index()
            replaced = {}          # index of a fused node -> its replacement nodes
            claimed = set()        # indices of nodes a fusion removes (QuantizeLinear, activation)
            nodes = list(self.graph.node)
            position = {id(n): i for i, n in enumerate(nodes)}
            for i, node in enumerate(nodes):
                if node.domain not in ("", "ai.onnx") or i in claimed:
                    continue
                rewrite = getattr(self, f"_fuse_{node.op_type}", None)
                if rewrite is None and node.op_type in _MOVEMENT:
                    rewrite = self._fuse_movement
                if rewrite is None:
                    continue
                result = rewrite(node)
                if result is None:
                    continue
                new_nodes, removed = result
                removed_at = [position[id(n)] for n in removed]
                if any(j in claimed or j in replaced for j in removed_at):
                    continue
                replaced[i] = new_nodes
                claimed.update(removed_at)
            if not replaced:
                break
            rebuilt = []
            for i, node in enumerate(nodes):
                if i in replaced:
                    rebuilt.extend(replaced[i])
                elif i not in claimed:
                    rebuilt.append(node)
            del self.graph.node[:]
            self.graph.node.extend(rebuilt)
        self._prune()
        if self.new_inits:
            self.graph.initializer.extend(self.new_inits)
            self.new_inits = []
        if self.used_ms and not any(o.domain == MS_DOMAIN for o in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))

    def _prune(self):
        """Drops DequantizeLinear (and Constant) nodes and initializers nothing reads any more."""
        while True:
            self._index()
            dead = [n for n in self.graph.node if n.op_type in ("DequantizeLinear", "Constant")
                    and all(not self.consumers.get(o) and o not in self.graph_outputs for o in n.output)]
            if not dead:
                break
            ids = {id(n) for n in dead}
            kept = [n for n in self.graph.node if id(n) not in ids]
            del self.graph.node[:]
            self.graph.node.extend(kept)
        used = {i for n in self.graph.node for i in n.input} | self.graph_outputs
        used |= {name for n in self.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH
                 for name in _graph_reads(a.g)}
        graph_inputs = {i.name for i in self.graph.input}
        kept = [t for t in list(self.graph.initializer) + self.new_inits if t.name in used or t.name in graph_inputs]
        self.new_inits = []
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)

    # ---------------------------------------------------------------- rewrites

    @staticmethod
    def _removed(q, activation, node):
        """Nodes a fused ``node`` replaces besides itself: its QuantizeLinear and a dropped activation."""
        removed = [q.node]
        if activation is not None:
            removed.append(activation)
        return removed

    def _fuse_Conv(self, node):
        if len(node.input) < 2:
            return None
        x = self._dq_of(node.input[0])
        w = self._dq_of(node.input[1])
        if x is None or w is None or not x.per_tensor or w.data not in self.constants:
            return None
        weights = np.asarray(self.constants[w.data])
        M = weights.shape[0]
        if not w.per_tensor and not (w.scale.ndim == 1 and w.scale.size == M and w.axis % weights.ndim == 0):
            return None
        q, activation = self._sole_q_after(node.output[0])
        if q is None:
            return None
        w_scale = np.broadcast_to(w.scale.reshape(-1), (M,)) if w.per_tensor else w.scale
        bias_name = self._int32_bias(node.input[2] if len(node.input) > 2 else "", x, w_scale, q, node.name or "conv")
        if bias_name is None:
            return None
        base = node.name or node.output[0]
        inputs = [x.data, x.scale_name, self._zero_name(x, base + "_x"), w.data, w.scale_name,
                  self._zero_name(w, base + "_w"), q.scale_name, self._zero_name(q, base + "_y")]
        if bias_name:
            inputs.append(bias_name)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        fused = helper.make_node("QLinearConv", inputs, [q.data], name=base + "_quant", **attrs)
        return [fused], self._removed(q, activation, node)

    def _int32_bias(self, name, x, w_scale, q, base):
        """'' for no bias, the int32 bias name, or None if the bias cannot be made exact."""
        if not name:
            return ""
        product = (np.float32(x.scale.reshape(-1)[0]) * w_scale.astype(np.float32)).astype(np.float32)
        dq = self._bias_dq(name)
        if dq is not None:
            values, bias_scale = dq
            values = values.reshape(-1).astype(np.float64)
            if values.size != product.size:
                return None
            bias_scale = np.broadcast_to(bias_scale.reshape(-1), product.shape).astype(np.float64)
            if np.allclose(bias_scale, product, rtol=1e-6, atol=0):
                return self.producer[name].input[0] if values.shape == product.shape else None
            real = values * bias_scale
        elif name in self.constants and np.asarray(self.constants[name]).dtype == np.float32:
            real = np.asarray(self.constants[name]).astype(np.float64).reshape(-1)
        else:
            return None
        y_scale = float(q.scale.reshape(-1)[0])
        if real.shape != product.shape or np.max(product) > y_scale:
            return None      # rounding the bias could move the output by more than half a step
        quantized = np.rint(real / product.astype(np.float64))
        if np.any(np.abs(quantized) > 2**31 - 1):
            return None
        return self._const(base + "_bias", quantized.astype(np.int32))

    def _fuse_MatMul(self, node):
        a = self._dq_of(node.input[0])
        b = self._dq_of(node.input[1])
        if a is None or b is None or not a.per_tensor:
            return None
        if not b.per_tensor:
            if b.data not in self.constants:
                return None
            weights = np.asarray(self.constants[b.data])
            if weights.ndim != 2 or b.scale.ndim != 1 or b.scale.size != weights.shape[1] or b.axis % 2 != 1:
                return None
        q, activation = self._sole_q_after(node.output[0])
        if q is None:
            return None
        base = node.name or node.output[0]
        inputs = [a.data, a.scale_name, self._zero_name(a, base + "_a"), b.data, b.scale_name,
                  self._zero_name(b, base + "_b"), q.scale_name, self._zero_name(q, base + "_y")]
        return [helper.make_node("QLinearMatMul", inputs, [q.data], name=base + "_quant")], \
            self._removed(q, activation, node)

    def _fuse_Gemm(self, node):
        a = self._dq_of(node.input[0])
        b = self._dq_of(node.input[1])
        if a is None or b is None or not a.per_tensor or b.data not in self.constants:
            return None
        alpha = float(attr(node, "alpha", 1.0))
        beta = float(attr(node, "beta", 1.0))
        trans_a, trans_b = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
        weights = np.asarray(self.constants[b.data])
        if weights.ndim != 2:
            return None
        N = weights.shape[0] if trans_b else weights.shape[1]
        if not b.per_tensor and not (b.scale.ndim == 1 and b.scale.size == N and b.axis % 2 == (0 if trans_b else 1)):
            return None
        q, activation = self._sole_q_after(node.output[0])
        if q is None:
            return None
        b_scale = np.broadcast_to(b.scale.reshape(-1), (N,))
        base = node.name or node.output[0]
        c_name = ""
        if len(node.input) > 2 and node.input[2]:
            if beta != alpha:
                return None
            # QGemm adds C to the int32 sums scaled by alpha*a_scale*b_scale: C's scale must be a_scale*b_scale.
            c_name = self._int32_bias(node.input[2], a, b_scale, _scaled(q, 1.0 / alpha), base)
            if c_name is None:
                return None
        inputs = [a.data, a.scale_name, self._zero_name(a, base + "_a"), b.data, b.scale_name,
                  self._zero_name(b, base + "_b"), c_name, q.scale_name, self._zero_name(q, base + "_y")]
        self.used_ms = True
        fused = helper.make_node("QGemm", inputs, [q.data], name=base + "_quant", domain=MS_DOMAIN,
                                 alpha=alpha, transA=trans_a, transB=trans_b)
        return [fused], self._removed(q, activation, node)

    def _binary(self, node, op_type):
        a = self._dq_of(node.input[0])
        b = self._dq_of(node.input[1])
        if a is None or b is None or not a.per_tensor or not b.per_tensor or a.dtype != b.dtype:
            return None
        q, activation = self._sole_q_after(node.output[0])
        if q is None or q.dtype != a.dtype:
            return None
        base = node.name or node.output[0]
        inputs = [a.data, a.scale_name, self._zero_name(a, base + "_a"), b.data, b.scale_name,
                  self._zero_name(b, base + "_b"), q.scale_name, self._zero_name(q, base + "_y")]
        self.used_ms = True
        return [helper.make_node(op_type, inputs, [q.data], name=base + "_quant", domain=MS_DOMAIN)], \
            self._removed(q, activation, node)

    def _fuse_Add(self, node):
        return self._binary(node, "QLinearAdd")

    def _fuse_Mul(self, node):
        return self._binary(node, "QLinearMul")

    def _unary(self, node, op_type, allow_activation=False, **attrs):
        x = self._dq_of(node.input[0])
        if x is None or not x.per_tensor:
            return None
        q, activation = self._sole_q_after(node.output[0], allow_activation)
        if q is None or q.dtype != x.dtype:
            return None
        base = node.name or node.output[0]
        inputs = [x.data, x.scale_name, self._zero_name(x, base + "_x"), q.scale_name,
                  self._zero_name(q, base + "_y")]
        self.used_ms = True
        return [helper.make_node(op_type, inputs, [q.data], name=base + "_quant", domain=MS_DOMAIN, **attrs)], \
            self._removed(q, activation, node)

    def _fuse_Sigmoid(self, node):
        return self._unary(node, "QLinearSigmoid")

    def _fuse_LeakyRelu(self, node):
        return self._unary(node, "QLinearLeakyRelu", alpha=float(attr(node, "alpha", 0.01)))

    def _fuse_Relu(self, node):
        return self._unary(node, "QLinearLeakyRelu", alpha=0.0)

    def _fuse_Softmax(self, node):
        default_axis = -1 if self.opset >= 13 else 1
        return self._unary(node, "QLinearSoftmax", axis=int(attr(node, "axis", default_axis)),
                           opset=self.opset)

    def _fuse_GlobalAveragePool(self, node):
        return self._unary(node, "QLinearGlobalAveragePool", channels_last=0)

    def _fuse_AveragePool(self, node):
        dilations = attr(node, "dilations")
        if dilations is not None and any(d != 1 for d in dilations):
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "dilations"}
        for key in ("auto_pad",):
            if key in attrs and isinstance(attrs[key], bytes):
                attrs[key] = attrs[key].decode()
        return self._unary(node, "QLinearAveragePool", **attrs)

    def _fuse_Concat(self, node):
        params = []
        for name in node.input:
            p = self._dq_of(name)
            if p is None or not p.per_tensor:
                return None
            params.append(p)
        if not params or len({p.dtype for p in params}) != 1:
            return None
        q, activation = self._sole_q_after(node.output[0], allow_activation=False)
        if q is None or q.dtype != params[0].dtype:
            return None
        base = node.name or node.output[0]
        axis = int(attr(node, "axis"))
        if all(p.same_as(q) for p in params):
            return [helper.make_node("Concat", [p.data for p in params], [q.data], name=base + "_quant",
                                     axis=axis)], self._removed(q, activation, node)
        inputs = [q.scale_name, self._zero_name(q, base + "_y")]
        for i, p in enumerate(params):
            inputs += [p.data, p.scale_name, self._zero_name(p, f"{base}_{i}")]
        self.used_ms = True
        return [helper.make_node("QLinearConcat", inputs, [q.data], name=base + "_quant", domain=MS_DOMAIN,
                                 axis=axis)], self._removed(q, activation, node)

    def _fuse_movement(self, node):
        """An op that only moves values runs on the quantized tensor when in and out params agree."""
        x = self._dq_of(node.input[0]) if node.input and node.input[0] else None
        if x is None or not x.per_tensor:
            return None
        if node.op_type == "MaxPool" and (self.opset < 12 or len(node.output) > 1 and node.output[1]):
            return None
        if node.op_type == "Resize" and attr(node, "mode", b"nearest") not in (b"nearest", "nearest"):
            return None
        pad_value = None
        if node.op_type == "Pad":
            mode = attr(node, "mode", b"constant")
            if mode in (b"constant", "constant"):
                pad_value = self._pad_value(node)
                if pad_value is False:
                    return None
        outs = []
        for name in node.output:
            if not name:
                outs.append(None)
                continue
            q, _ = self._sole_q_after(name, allow_activation=False)
            if q is None or not q.same_as(x):
                return None
            outs.append(q)
        inputs = [x.data] + list(node.input[1:])
        if pad_value is not None:
            inputs = inputs + [""] * (3 - len(inputs)) if len(inputs) < 3 else inputs
            if self.opset >= 11:
                inputs[2] = self._const((node.name or node.output[0]) + "_pad", np.asarray(pad_value, x.dtype))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Pad" and self.opset < 11 and pad_value is not None:
            attrs["value"] = float(pad_value)
        moved = helper.make_node(node.op_type, inputs, [q.data if q else "" for q in outs],
                                 name=(node.name or node.output[0]) + "_quant", **attrs)
        return [moved], [q.node for q in outs if q is not None]

    def _pad_value(self, node):
        """The quantized constant pad value: False when it is not a constant."""
        x = self._dq_of(node.input[0])
        if self.opset < 11:
            value = float(attr(node, "value", 0.0))
        elif len(node.input) > 2 and node.input[2]:
            if node.input[2] not in self.constants:
                return False
            value = float(np.asarray(self.constants[node.input[2]]).reshape(-1)[0])
        else:
            value = 0.0
        qmin, qmax = _bounds(x.dtype)
        scale = np.float32(x.scale.reshape(-1)[0])
        return min(max(int(np.rint(np.float32(value) / scale)) + int(x.zero.reshape(-1)[0]), qmin), qmax)


def _scaled(q: _QParams, factor):
    """``q`` with its scale multiplied by ``factor`` (only the scale matters to the bias check)."""
    copy = _QParams(q.node, q.data, q.scale * np.float32(factor), q.zero, q.dtype, q.axis, q.scale_name, q.zero_name)
    return copy


def _bounds(dtype):
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _graph_reads(graph):
    names = set()
    for node in graph.node:
        names.update(node.input)
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                names |= _graph_reads(a.g)
    return names


