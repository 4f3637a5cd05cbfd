"""Dynamic batching: queued requests stacked along the batch dimension, run once, split back by rows.

One collector task per model takes a free worker slot, then waits until ``max_batch`` rows of requests
that can be stacked (same inputs, dtypes and non-batch dims) are queued or the oldest has waited
``max_delay``; the batch runs on the thread pool while the next one gathers. The queue is bounded:
:class:`QueueFull` when it holds ``max_queue`` requests, so memory never grows with the offered load.

A batch that fails is rerun request by request, so one request whose values break a kernel gets its own
error and the others their answers. A model whose outputs do not come back with the stacked number of
rows is run one request at a time from then on.
"""
from __future__ import annotations

import asyncio
import collections
import time

import numpy as np


class QueueFull(Exception):
    """The model's queue holds ``max_queue`` requests (HTTP 503 with Retry-After)."""


class _Request:
    __slots__ = ("feeds", "rows", "signature", "future", "enqueued")

    def __init__(self, feeds, rows, signature, future):
        self.feeds, self.rows, self.signature, self.future = feeds, rows, signature, future
        self.enqueued = time.monotonic()


def _stack_signature(feeds):
    """Rows and a key equal for requests that can be stacked; rows None when this one must run alone."""
    rows = {v.shape[0] if v.ndim else None for v in feeds.values()}
    if len(rows) != 1 or None in rows or 0 in rows:
        return None, object()
    key = tuple(sorted((name, v.dtype.str, v.shape[1:]) for name, v in feeds.items()))
    return rows.pop(), key


class Batcher:
    def __init__(self, model, executor, workers, max_batch, max_delay_s, max_queue, metrics):
        self.model = model
        self.executor = executor
        self.max_batch = max(1, int(max_batch))
        self.max_delay_s = max(0.0, float(max_delay_s))
        self.max_queue = max(1, int(max_queue))
        self.metrics = metrics
        self.batching = model.batchable and self.max_batch > 1
        self._pending: collections.deque[_Request] = collections.deque()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max(1, int(workers)))
        self._running: set[asyncio.Task] = set()
        self._collector = asyncio.get_running_loop().create_task(self._collect())

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def submit(self, feeds) -> list[np.ndarray]:
        """The model's outputs for ``feeds`` (already checked); QueueFull when the queue is full."""
        if len(self._pending) >= self.max_queue:
            raise QueueFull(self.model.name)
        rows, key = _stack_signature(feeds) if self.batching else (None, object())
        request = _Request(feeds, rows, key, asyncio.get_running_loop().create_future())
        self._pending.append(request)
        self.metrics.queue_depth.labels(self.model.name).set(len(self._pending))
        self._wakeup.set()
        return await request.future

    async def drain(self):
        """Returns once every queued request has been run and answered, then stops collecting."""
        while self._pending or self._running:
            await asyncio.sleep(0.01)
        self._collector.cancel()

    def _drop_abandoned(self):
        while self._pending and self._pending[0].future.done():   # timed out or client gone
            self._pending.popleft()

    def _stackable_rows(self, first):
        return sum(r.rows for r in self._pending if r.signature == first.signature and not r.future.done())

    async def _collect(self):
        while True:
            self._drop_abandoned()
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()
            self._drop_abandoned()
            if not self._pending:
                self._slots.release()
                continue
            first = self._pending[0]
            if first.rows is not None:
                deadline = first.enqueued + self.max_delay_s
                while self._stackable_rows(first) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), left)
                    except asyncio.TimeoutError:
                        break
            batch = self._take(first)
            self.metrics.queue_depth.labels(self.model.name).set(len(self._pending))
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _take(self, first):
        if first.rows is None:
            self._pending.popleft()
            return [] if first.future.done() else [first]
        batch, rows, kept = [], 0, collections.deque()
        while self._pending:
            request = self._pending.popleft()
            if request.future.done():
                continue
            fits = request.signature == first.signature and (not batch or rows + request.rows <= self.max_batch)
            if fits:
                batch.append(request)
                rows += request.rows
            else:
                kept.append(request)
        self._pending = kept
        return batch

    async def _run(self, batch):
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self._compute, batch)
        except BaseException as exc:    # the pool is gone (shutdown): answer rather than hang
            results = [exc] * len(batch)
        finally:
            self._slots.release()
        for request, result in zip(batch, results):
            if request.future.done():
                continue
            if isinstance(result, BaseException):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)

    def _compute(self, batch):
        """Runs on a pool thread: a list with the outputs (or the exception) of each request."""
        model, name = self.model, self.model.name
        rows = sum(r.rows or 0 for r in batch)
        self.metrics.batch_size.labels(name, model.precision).observe(len(batch))
        self.metrics.batch_rows.labels(name, model.precision).observe(rows)
        start = time.perf_counter()
        try:
            if len(batch) == 1:
                return [self._run_one(batch[0])]
            stacked = {n: np.concatenate([r.feeds[n] for r in batch]) for n in batch[0].feeds}
            try:
                outputs = model.run(stacked)
            except Exception:
                return [self._run_one(r) for r in batch]
            if any(o.ndim == 0 or o.shape[0] != rows for o in outputs):
                self.batching = False     # the batch dim does not carry through this model
                return [self._run_one(r) for r in batch]
            bounds = np.cumsum([r.rows for r in batch])[:-1]
            per_output = [np.split(o, bounds) for o in outputs]
            return [[np.ascontiguousarray(parts[i]) for parts in per_output] for i in range(len(batch))]
        finally:
            self.metrics.inference_seconds.labels(name, model.precision).observe(time.perf_counter() - start)

    def _run_one(self, request):
        try:
            return self.model.run(request.feeds)
        except Exception as exc:
            return exc
