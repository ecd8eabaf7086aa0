"""Waiting in tests: poll until a condition holds, or fail naming what was awaited and what was
last seen. `wait_until` blocks (for threads, child processes, servers); `await_until` yields to
the event loop and takes a plain or an async check."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


def _timed_out(what: str, timeout: float, last: object) -> AssertionError:
    return AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r:.500}")


def wait_until(check: Callable[[], T], timeout: float, what: str, *, done: Callable[[T], object] = bool,
               interval: float = 0.1) -> T:
    """Call `check` until `done` holds for what it returns (by default: until it is truthy)."""
    end = time.monotonic() + timeout
    while not done(value := check()):
        if time.monotonic() > end:
            raise _timed_out(what, timeout, value)
        time.sleep(interval)
    return value


@overload
async def await_until(check: Callable[[], Awaitable[T]], timeout: float, what: str, *,
                      done: Callable[[T], object] = bool, interval: float = 0.05) -> T: ...


@overload
async def await_until(check: Callable[[], T], timeout: float, what: str, *,
                      done: Callable[[T], object] = bool, interval: float = 0.05) -> T: ...


async def await_until(check: Callable[[], Any], timeout: float, what: str, *,
                      done: Callable[[Any], object] = bool, interval: float = 0.05) -> Any:
    """`wait_until` for async tests: `check` may be a coroutine function."""
    end = time.monotonic() + timeout
    while True:
        result = check()
        value = await result if inspect.isawaitable(result) else result
        if done(value):
            return value
        if time.monotonic() > end:
            raise _timed_out(what, timeout, value)
        await asyncio.sleep(interval)
