"""Serving qrt models over HTTP: the Open Inference Protocol (KServe v2 REST) with dynamic batching.

    qrt serve model.onnx --port 8000                  # or: python -m qrt.serve.cli ...
    from qrt.serve import ServerConfig, create_app    # the ASGI app, for uvicorn or Ray Serve

Needs the ``serve`` extra (fastapi, uvicorn, prometheus_client); ``import qrt`` never loads it.
"""


def __getattr__(name):
    if name in ("ServerConfig", "create_app"):
        from . import app
        return getattr(app, name)
    raise AttributeError(f"module 'qrt.serve' has no attribute {name!r}")


__all__ = ["ServerConfig", "create_app"]
