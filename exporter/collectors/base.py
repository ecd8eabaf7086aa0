"""What a collector is: a name, a schedule, and `collect()` returning samples or raising."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

from exporter.config import ExporterConfig
from exporter.metrics import Sample
from taskmedic.config.model import System
from taskmedic.connections import Connections


class Collector(Protocol):
    @property
    def name(self) -> str:
        """The `collector` label, e.g. "tasks:cape"."""
        ...

    @property
    def subject(self) -> tuple[str, str]:
        """What the collector watches, as a label joinable with its own series:
        ("system", "cape"), ("path", "/data"), ("backup", "sysreptor")."""
        ...

    @property
    def interval(self) -> float: ...

    @property
    def timeout(self) -> float: ...

    async def collect(self) -> list[Sample]:
        """Read the source once. Raise on failure; the runtime times, catches and reports it."""
        ...


T = TypeVar("T")


class BlockingCalls:
    """A collector's blocking work (statvfs on a hung NFS mount, reading backup files, psutil) in
    a daemon thread, one call at a time. A call that hangs outlives the collector's timeout, but
    the next run fails at once instead of starting another thread behind it: threads never pile
    up, and a hung one never holds up shutdown."""

    def __init__(self) -> None:
        self._pending: asyncio.Future[Any] | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pending is not None and not self._pending.done():
            raise TimeoutError("the previous run is still blocked")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(outcome: Callable[[], None]) -> None:
            if not future.done():
                outcome()

        def work() -> None:
            try:
                result = fn(*args)
            except BaseException as e:  # handed to the awaiting coroutine
                report: Callable[[], None] = partial(future.set_exception, e)
            else:
                report = partial(future.set_result, result)
            with contextlib.suppress(RuntimeError):  # the loop closed while we were blocked
                loop.call_soon_threadsafe(settle, report)

        threading.Thread(target=work, name="taskmedic-blocking", daemon=True).start()
        self._pending = future
        return await asyncio.shield(future)  # a timeout cancels the wait, not the bookkeeping


@dataclass
class SystemCollector:
    """What collectors of one configured system share: its name, settings, schedule and connections."""

    system_name: str
    system: System
    connections: Connections

    @property
    def subject(self) -> tuple[str, str]:
        return "system", self.system_name

    @property
    def interval(self) -> float:
        return self.system.interval

    @property
    def timeout(self) -> float:
        return self.system.timeout


Factory = Callable[[ExporterConfig, Connections], Sequence[Collector]]
