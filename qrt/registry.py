"""The op registry: (provider, domain, op_type) -> {since_version: kernel class}.

A node resolves to the class with the highest since_version <= the model's opset for the node's
domain, exactly as the ONNX spec versions operators.
"""
from __future__ import annotations

import bisect

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

_REGISTRY: dict[tuple[str, str, str], dict[int, type]] = {}


def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def register(op_type: str, since_version: int, domain: str = "", provider: str = CPU):
    """Class decorator: register a kernel class for ``op_type`` from ``since_version`` on."""

    def decorate(cls):
        key = (provider, _norm_domain(domain), op_type)
        versions = _REGISTRY.setdefault(key, {})
        if since_version in versions and versions[since_version] is not cls:
            raise RuntimeError(f"{domain or 'ai.onnx'}::{op_type} since {since_version} registered twice "
                               f"({versions[since_version].__qualname__} and {cls.__qualname__})")
        versions[since_version] = cls
        cls.op_type = op_type
        cls.domain = _norm_domain(domain)
        cls.provider = provider
        cls.since_version = since_version
        return cls

    return decorate


def lookup(op_type: str, domain: str, opset: int, provider: str = CPU):
    """The kernel class for a node of ``op_type`` in a model importing ``domain`` at ``opset``, or None."""
    _ensure_loaded()
    versions = _REGISTRY.get((provider, _norm_domain(domain), op_type))
    if not versions:
        return None
    since = sorted(versions)
    i = bisect.bisect_right(since, opset)
    if i == 0:
        return None
    return versions[since[i - 1]]


def registered_ops(provider: str = CPU):
    """Sorted list of (domain, op_type, since_versions) for one provider."""
    _ensure_loaded()
    return sorted((d, op, sorted(v)) for (p, d, op), v in _REGISTRY.items() if p == provider)


_loaded = False


def _ensure_loaded():
    global _loaded
    if not _loaded:
        _loaded = True
        import qrt.ops  # noqa: F401  (registers every CPU op)
