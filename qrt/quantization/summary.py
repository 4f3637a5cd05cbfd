"""What a quantization call did, as an object that prints as a readable report."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from onnx import TensorProto


@dataclass
class NodeReport:
    name: str
    op_type: str
    status: str          # "quantized", "fused", "float"
    detail: str = ""     # quantized: what it became; fused: into which node; float: why
    shape_computation: bool = False   # integer/bool shape arithmetic, which quantization leaves alone by nature


# Ops whose outputs are integers whatever the model declares.
_INTEGER_OUTPUT_OPS = frozenset({"Shape", "Size", "NonZero"})


def is_shape_computation(node, elem_types: dict) -> bool:
    """True for a node of the model's shape arithmetic (Shape, Gather/Concat/Range on int64, ...):
    every output has a known integer or bool element type."""
    if node.op_type in _INTEGER_OUTPUT_OPS:
        return True
    outputs = [name for name in node.output if name]
    return bool(outputs) and all(elem_types.get(name) in _INTEGER_TYPES for name in outputs)


_INTEGER_TYPES = frozenset({TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8,
                            TensorProto.UINT64, TensorProto.UINT32, TensorProto.UINT16, TensorProto.UINT8,
                            TensorProto.BOOL})


@dataclass
class QuantizationSummary:
    """Returned by :func:`quantize_static` and :func:`quantize_dynamic`.

    ``nodes`` has one :class:`NodeReport` per node of the pre-processed float model.
    ``size_before`` is the serialized size of the model as given, ``size_after`` that of the
    quantized model (bytes). ``model`` is the quantized ``onnx.ModelProto``.
    """

    mode: str
    model_name: str
    output_path: str | None
    size_before: int
    size_after: int
    nodes: list[NodeReport] = field(default_factory=list)
    preprocessing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ranges: dict = field(default_factory=dict)
    model: object = None

    @property
    def quantized(self) -> list[NodeReport]:
        return [n for n in self.nodes if n.status == "quantized"]

    @property
    def fused(self) -> list[NodeReport]:
        return [n for n in self.nodes if n.status == "fused"]

    @property
    def float_nodes(self) -> list[NodeReport]:
        return [n for n in self.nodes if n.status == "float"]

    @property
    def size_ratio(self) -> float:
        return self.size_after / self.size_before if self.size_before else float("nan")

    def __str__(self):
        return self.format()

    def format(self, verbose: bool = False) -> str:
        """The report; ``verbose`` lists every node kept in float with its reason, where the short form
        counts the shape-computation nodes and groups the others by op type and reason."""
        lines = [f"qrt {self.mode} quantization of {self.model_name}"
                 + (f" -> {self.output_path}" if self.output_path else "")]
        lines.append(f"  size: {_size(self.size_before)} -> {_size(self.size_after)} "
                     f"({100 * self.size_ratio:.1f}% of the float model)")
        counts = Counter(n.op_type for n in self.quantized)
        lines.append(f"  quantized {len(self.quantized)} node(s): "
                     + (", ".join(f"{op} x{c}" for op, c in sorted(counts.items())) or "none"))
        if self.fused:
            lines.append(f"  folded into the producer's output range: {len(self.fused)} node(s)")
        if self.preprocessing:
            lines.append("  pre-processing: " + "; ".join(self.preprocessing))
        kept = self.float_nodes
        if kept:
            lines.append(f"  kept in float: {len(kept)} node(s)")
            if verbose:
                lines.extend(f"    {r.op_type} {r.name!r}: {r.detail}" for r in kept)
            else:
                lines.extend(_grouped(kept))
        for warning in self.warnings:
            lines.append(f"  warning: {warning}")
        return "\n".join(lines)

    def __repr__(self):
        return (f"QuantizationSummary(mode={self.mode!r}, quantized={len(self.quantized)}, "
                f"float={len(self.float_nodes)}, size_before={self.size_before}, size_after={self.size_after})")


def _grouped(kept, limit: int = 20) -> list[str]:
    shape = [r for r in kept if r.shape_computation]
    lines = []
    if shape:
        ops = Counter(r.op_type for r in shape)
        lines.append(f"    {len(shape)} shape-computation node(s) stay as they are: "
                     + ", ".join(f"{op} x{c}" for op, c in ops.most_common()))
    groups = Counter((r.op_type, r.detail) for r in kept if not r.shape_computation)
    for (op, detail), count in list(groups.items())[:limit]:
        name = next(r.name for r in kept if (r.op_type, r.detail) == (op, detail))
        lines.append(f"    {op} x{count}: {detail}" if count > 1 else f"    {op} {name!r}: {detail}")
    if len(groups) > limit:
        lines.append(f"    ... and {len(groups) - limit} more reasons")
    if shape or len(groups) > limit:
        lines.append("    (--verbose, or summary.format(verbose=True), lists every node)")
    return lines


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
