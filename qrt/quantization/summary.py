"""What a quantization call did, as an object that prints as a readable report."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class NodeReport:
    name: str
    op_type: str
    status: str          # "quantized", "fused", "float"
    detail: str = ""     # quantized: what it became; fused: into which node; float: why


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
            for report in kept[:40]:
                lines.append(f"    {report.op_type} {report.name!r}: {report.detail}")
            if len(kept) > 40:
                lines.append(f"    ... and {len(kept) - 40} more")
        for warning in self.warnings:
            lines.append(f"  warning: {warning}")
        return "\n".join(lines)

    def __repr__(self):
        return (f"QuantizationSummary(mode={self.mode!r}, quantized={len(self.quantized)}, "
                f"float={len(self.float_nodes)}, size_before={self.size_before}, size_after={self.size_after})")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
