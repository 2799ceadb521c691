"""Dynamic batching: decoded videos of concurrent requests scored together by one worker thread.

Requests put their decoded videos on one queue. The worker takes the first, waits at most ``max_wait_ms`` for more
(or until ``max_batch`` are there), scores them with :func:`~vpt.rewards.engine.score_inputs` - the same call
``vpt score`` makes - and resolves each video's future. Videos that asked for different served models (``/score``
with and without ``"model"``) are scored in separate groups of the same round. All inference runs in this one
thread, never on the server's event loop, and models see one batch at a time.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Sequence

from vpt.rewards.engine import score_inputs
from vpt.rewards.model import RewardModel


class Closed(Exception):
    """The batcher no longer takes work (the server is shutting down)."""


@dataclass
class Job:
    """One decoded video waiting to be scored by the served models at ``selection`` (indices)."""

    selection: tuple[int, ...]
    inputs: tuple  # what each selected model scores (vpt.rewards.engine.model_inputs)
    prompt: str | None
    future: Future = field(default_factory=Future)  # -> {dimension: float} or {"error": reason}


@dataclass
class BatchStats:
    requests: int = 0
    videos: int = 0
    batches: int = 0
    largest_batch: int = 0

    def as_json(self) -> dict:
        return {"requests": self.requests, "videos": self.videos, "batches": self.batches,
                "largest_batch": self.largest_batch}


_STOP = object()


class Batcher:
    """The queue and its worker thread; :meth:`close` finishes what is queued, then stops the thread."""

    def __init__(self, models: Sequence[RewardModel], max_batch: int, max_wait_ms: float):
        self.models = list(models)
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="vpt-serve-batcher", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue ``jobs`` (one request's videos); :class:`Closed` once :meth:`close` was called."""
        with self._lock:
            if self._closed:
                raise Closed()
            self.stats.requests += 1
            for job in jobs:
                self._queue.put(job)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch, stop = [first], False
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                    break
                batch.append(job)
            self._score(batch)
            if stop:
                return

    def _score(self, batch: list[Job]) -> None:
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]  # not the requests given up
        if not batch:
            return
        self.stats.batches += 1
        self.stats.videos += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        groups: dict[tuple[int, ...], list[Job]] = {}
        for job in batch:
            groups.setdefault(job.selection, []).append(job)
        for selection, jobs in groups.items():
            try:
                results = score_inputs([self.models[i] for i in selection], [job.inputs for job in jobs],
                                       [job.prompt for job in jobs])
            except Exception as error:  # noqa: BLE001 - handed to the requests; the worker keeps serving
                for job in jobs:
                    job.future.set_exception(error)
                continue
            for job, result in zip(jobs, results):
                job.future.set_result(result)
