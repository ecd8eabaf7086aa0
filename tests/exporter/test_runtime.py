"""The runtime around collectors: blocking work that hangs does not pile up threads."""

from __future__ import annotations

import asyncio
import threading

import pytest

from exporter.collectors.base import BlockingCalls
from tests.polling import await_until


async def test_a_hung_blocking_call_is_not_repeated_while_it_hangs() -> None:
    calls = BlockingCalls()
    release = threading.Event()
    started = []

    def stuck_statvfs() -> str:  # what a hung NFS mount does to os.statvfs
        started.append(1)
        release.wait(30)
        return "answered"

    before = threading.active_count()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(calls.run(stuck_statvfs), 0.2)
    for _ in range(5):  # later cycles fail at once: no new thread behind the hung one
        with pytest.raises(TimeoutError, match="still blocked"):
            await asyncio.wait_for(calls.run(stuck_statvfs), 0.2)
    assert len(started) == 1 and threading.active_count() == before + 1
    release.set()
    await await_until(threading.active_count, 2.5, "the released thread to end", done=lambda n: n == before)
    assert await calls.run(lambda: "fresh") == "fresh"


async def test_blocking_call_errors_reach_the_collector() -> None:
    with pytest.raises(FileNotFoundError):
        await BlockingCalls().run(open, "/nonexistent/taskmedic")
