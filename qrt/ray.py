"""qrt on a Ray cluster (``pip install 'qrt[ray]'``): serving, offline batch inference, calibration.

* :func:`deployment` — a Ray Serve deployment of the same app ``qrt serve`` runs (the Open Inference
  Protocol, batching, metrics), built on each replica; replicas and autoscaling pass straight through.
* :func:`batch_infer` — a Ray Data dataset through a model: an actor pool, one session per actor.
* :func:`collect_ranges` — calibration ranges collected on shards in parallel and merged exactly
  (:mod:`calibration.shards`): equal to ``calibration.collect_ranges`` in one process.

Model paths must be readable on every node (or pass the model as bytes where noted).
"""
from __future__ import annotations

import numpy as np

from .errors import QrtError


def _require_ray():
    try:
        import ray
    except ImportError as exc:
        raise QrtError(f"qrt.ray needs Ray (pip install 'qrt[ray]'): {exc}") from None
    return ray


def deployment(models, *, name="qrt", num_replicas=None, autoscaling_config=None, ray_actor_options=None,
               max_ongoing_requests=None, **server_options):
    """A bound Ray Serve application serving ``models`` (``{name: path}`` or ``[(name, path)]``).

    ``server_options`` are :class:`qrt.serve.ServerConfig` fields (``max_batch``, ``max_delay_ms``,
    ``workers``, ``int8``, ...); the other keywords are ``serve.deployment``'s. Run it with
    ``serve.run(qrt.ray.deployment(...), route_prefix="/")``.
    """
    _require_ray()
    from ray import serve

    from .serve.app import ServerConfig, create_app
    specs = list(models.items()) if isinstance(models, dict) else [tuple(m) for m in models]
    config = ServerConfig(models=specs, **server_options)
    options = {"num_replicas": num_replicas, "autoscaling_config": autoscaling_config,
               "ray_actor_options": ray_actor_options, "max_ongoing_requests": max_ongoing_requests}
    options = {k: v for k, v in options.items() if v is not None}
    def build_app():
        # Runs on each replica, so every replica has its own sessions, metrics registry and thread pool
        # (Serve tells a builder from an app by its being a plain function, so not functools.partial).
        return create_app(config)

    ingress = serve.ingress(build_app)()
    return serve.deployment(ingress, name=name, **options).bind()


class _Predictor:
    """One Ray Data actor: a session built once, run on every batch it is given."""

    def __init__(self, model, input_columns, keep_columns, threads):
        from . import InferenceSession, SessionOptions
        options = SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = InferenceSession(model, options)
        self.input_columns = input_columns
        self.keep_columns = keep_columns
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, batch: dict) -> dict:
        feeds = {name: np.ascontiguousarray(batch[column]) for name, column in self.input_columns.items()}
        outputs = self.session.run(None, feeds)
        result = {k: v for k, v in batch.items() if k in self.keep_columns}
        result.update(zip(self.output_names, outputs))
        return result


def batch_infer(dataset, model, *, input_columns=None, keep_columns=None, batch_size=256, concurrency=2,
                num_cpus=1, threads=None):
    """``dataset`` with the model's outputs added as columns (named after the outputs), computed on a pool
    of ``concurrency`` actors, each holding one session.

    ``model``: path or bytes. ``input_columns``: ``{model input: column}`` (default: columns named
    like the inputs). ``keep_columns``: input columns to carry to the result (default all, so an id
    column can match rows up again: Ray Data does not keep row order unless asked to).
    """
    _require_ray()
    from . import InferenceSession
    inputs = [a.name for a in InferenceSession(model).get_inputs()]
    columns = dataset.columns()
    mapping = dict(input_columns) if input_columns else {name: name for name in inputs}
    missing = [n for n in inputs if n not in mapping]
    absent = [c for c in mapping.values() if c not in columns]
    if missing or absent:
        raise QrtError(f"batch_infer: the model's inputs are {inputs} and the dataset's columns {columns}; "
                       f"map inputs to columns with input_columns={{input: column}}"
                       + (f" (no column for {missing})" if missing else "")
                       + (f" (no such column(s) {absent})" if absent else ""))
    keep = list(columns) if keep_columns is None else list(keep_columns)
    return dataset.map_batches(_Predictor, fn_constructor_kwargs={"model": model, "input_columns": mapping,
                                                                  "keep_columns": keep, "threads": threads},
                               batch_size=batch_size, concurrency=concurrency, num_cpus=num_cpus,
                               batch_format="numpy")


def collect_ranges(model, batches, num_shards=None, method=None, tensor_names=None, num_cpus=1,
                   **observer_options) -> dict[str, tuple[float, float]]:
    """``calibration.collect_ranges(model, batches, ...)`` computed by ``num_shards`` Ray tasks (default:
    the cluster's CPUs), exactly equal to the single-process result. ``batches``: a list of feed dicts.
    The ranges feed ``qrt.quantize_static(..., tensor_ranges=ranges)``."""
    ray = _require_ray()
    from calibration.shards import calibrate_sharded, ranges_of

    if isinstance(model, str):
        with open(model, "rb") as fh:
            model = fh.read()
    model_ref = ray.put(model)

    stored = {}     # id -> (value, ref): the stream's extents go to the object store once, not per task

    def put(value):
        if id(value) not in stored:
            stored[id(value)] = (value, ray.put(value))
        return stored[id(value)][1]

    def ray_map(function, calls):
        remote = ray.remote(num_cpus=num_cpus)(function)
        refs = []
        for kwargs in calls:
            kwargs = {k: (model_ref if k == "model" else put(v) if k in ("batches", "stream_extents") else v)
                      for k, v in kwargs.items()}
            refs.append(remote.remote(**kwargs))
        return ray.get(refs)

    shards = num_shards or max(1, int(ray.cluster_resources().get("CPU", 1)))
    return ranges_of(calibrate_sharded(model, batches, shards, method, tensor_names, map_fn=ray_map,
                                       **observer_options))
