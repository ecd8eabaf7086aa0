"""The real BullMQ workers a test starts on one queue (tests/workers/bullmq_harness.py), all
SIGKILLed at its end."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.workers.bullmq_harness import WorkerProcess, enqueue_sleep, ensure_installed, kill, start_worker, wait_held


class Workers:
    """Workers of `queue`, each started with the given timings (BullMQ's defaults otherwise)."""

    def __init__(self, url: str, queue: str, **timings: int) -> None:
        self.url = url
        self.queue = queue
        self.timings = timings
        self.started: list[WorkerProcess] = []

    def start(self, name: str, **options: Any) -> WorkerProcess:
        worker = start_worker(self.url, self.queue, name=name, **self.timings, **options)
        self.started.append(worker)
        return worker

    def start_on_job(self, name: str, seconds: float) -> tuple[WorkerProcess, str]:
        """A worker started, then a `seconds` job enqueued: returned once that worker holds it."""
        worker = self.start(name)
        job = enqueue_sleep(self.url, self.queue, seconds)
        assert wait_held(self.url, self.queue, job).holder == worker.worker_id
        return worker, job

    def kill_all(self) -> None:
        for worker in self.started:
            kill(worker)


@contextmanager
def workers_of(url: str, queue: str, **timings: int) -> Iterator[Workers]:
    """Workers of `queue` (BullMQ installed first, if need be), all SIGKILLed when the block ends."""
    ensure_installed()
    workers = Workers(url, queue, **timings)
    try:
        yield workers
    finally:
        workers.kill_all()
