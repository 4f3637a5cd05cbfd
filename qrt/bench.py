"""Side-by-side latency of qrt and onnxruntime in one process, same inputs, same thread count.

Machines are noisy, so this reports medians and ratios; tests never assert absolute times.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numba

from .feeds import random_feeds
from .model import load_model
from .session import InferenceSession, SessionOptions


@dataclass
class BenchResult:
    model: str
    threads: int
    qrt_cold_s: float          # session creation + first run
    ort_cold_s: float
    qrt_median_ms: float
    ort_median_ms: float

    @property
    def ratio(self) -> float:
        """qrt time / onnxruntime time (below 1 means qrt is faster)."""
        return self.qrt_median_ms / self.ort_median_ms if self.ort_median_ms else float("inf")

    def __str__(self):
        return (f"{self.model}: threads={self.threads}\n"
                f"  cold start (create + first run): qrt {self.qrt_cold_s:.3f} s, onnxruntime {self.ort_cold_s:.3f} s\n"
                f"  median latency: qrt {self.qrt_median_ms:.3f} ms, onnxruntime {self.ort_median_ms:.3f} ms, "
                f"ratio qrt/ort {self.ratio:.2f}x")


def run_times(fn, runs: int, warmup: int) -> list:
    """Wall time of each of ``runs`` calls of ``fn`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def time_runs(fn, runs: int, warmup: int) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    return statistics.median(run_times(fn, runs, warmup)) * 1e3


def benchmark(model, feeds=None, runs: int = 20, warmup: int = 3, threads: int | None = None,
              name: str = "model", free_dims: dict | None = None) -> BenchResult:
    """``free_dims`` fixes symbolic input dimensions by name in both runtimes."""
    import onnxruntime as ort

    proto = load_model(model)
    threads = threads or numba.config.NUMBA_NUM_THREADS
    options, ort_options = SessionOptions(), ort.SessionOptions()
    options.intra_op_num_threads = threads
    for dim, value in (free_dims or {}).items():
        options.add_free_dimension_override_by_name(dim, value)
        ort_options.add_free_dimension_override_by_name(dim, value)
    start = time.perf_counter()
    session = InferenceSession(proto, options)
    feeds = feeds if feeds is not None else random_feeds(session)
    session.run(None, feeds)
    qrt_cold = time.perf_counter() - start

    ort_options.intra_op_num_threads = threads
    start = time.perf_counter()
    reference = ort.InferenceSession(proto.SerializeToString(), ort_options, providers=["CPUExecutionProvider"])
    reference.run(None, feeds)
    ort_cold = time.perf_counter() - start

    qrt_ms = time_runs(lambda: session.run(None, feeds), runs, warmup)
    ort_ms = time_runs(lambda: reference.run(None, feeds), runs, warmup)
    return BenchResult(name, threads, qrt_cold, ort_cold, qrt_ms, ort_ms)
