"""Runs each collector on its own interval, times it, catches its failures, and swaps the
snapshot. The runtime, not the collector, decides what `up` and `duration` are."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from exporter.collectors.base import Collector
from exporter.metrics import Sample
from exporter.snapshot import CollectorResult, Snapshot

log = logging.getLogger("taskmedic.exporter")


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"[:300]


async def run_once(collector: Collector) -> CollectorResult:
    started = time.monotonic()
    try:
        samples: list[Sample] = await asyncio.wait_for(collector.collect(), collector.timeout)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a collector may fail in any way; the others keep serving
        return CollectorResult(up=False, duration=time.monotonic() - started, error=describe_error(exc))
    return CollectorResult(samples=tuple(samples), up=True, duration=time.monotonic() - started,
                           last_success=time.time())


class Runtime:
    def __init__(self, collectors: list[Collector], previous: Snapshot | None = None) -> None:
        self.collectors = collectors
        subjects = {c.name: c.subject for c in collectors}
        self.snapshot = previous.carried_into(subjects) if previous is not None else Snapshot.empty(subjects)
        self._tasks: list[asyncio.Task[None]] = []

    def _record(self, collector: Collector, result: CollectorResult) -> None:
        before = self.snapshot.results.get(collector.name)
        if result.up and before is not None and before.error:
            log.info("collector recovered", extra={"collector": collector.name})
        elif not result.up and (before is None or before.error != result.error):
            log.warning("collector failed", extra={"collector": collector.name, "error": result.error})
        self.snapshot = self.snapshot.with_result(collector.name, result)

    async def _loop(self, collector: Collector) -> None:
        while True:
            started = time.monotonic()
            self._record(collector, await run_once(collector))
            await asyncio.sleep(max(collector.interval - (time.monotonic() - started), 0.0))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(c), name=c.name) for c in self.collectors]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
