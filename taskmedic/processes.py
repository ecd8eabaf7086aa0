"""Is the process a task system recorded still its engine? One answer for both processes.

A PID in a task row names the engine that ran the task, but only for as long as that process
lives: afterwards the kernel hands the number to anything. So a process counts as the engine
only when all of these hold:

- its executable equals the configured engine *exactly*: `/proc/<pid>/exe` when it can be read,
  else its argv[0] (another user's process without ptrace rights). When the configured engine
  is a bare name (`scan-engine`, no `/`) the basename is compared instead of the whole path: for
  engines whose install path differs between hosts. Nothing is ever searched for inside the
  command line: `vim /etc/scan-engine.conf` or `python3 x.py --note scan-engine` is not it;
- its owner (user name or uid) equals the configured owner, when one is configured; argv[0] is
  whatever the process says it is, so configure `owner` where the fallback can be reached;
- it was created no later than the task started (plus `START_TOLERANCE`): a process created
  after its task started is a reused PID, not the task's engine.

`judge_engine` answers with a `Verdict` that keeps "dead" (`gone`) apart from "cannot tell"
(`unknown`): callers act on the first and never on the second.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import psutil

# The task system writes the task's start and spawns its engine in some order, possibly after
# queueing or a warm-up, and the database's clock may run behind this host's: an engine created
# up to this many seconds after its task started is still that task's engine (a 5 s window let a
# live engine that started 6 s late be taken for a reused PID and its task terminated). A PID
# reused within this window would need the engine to die and the PID space to wrap in 2 minutes.
START_TOLERANCE = 120.0

VerdictKind = Literal["engine", "gone", "not_engine", "unknown"]


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    reason: str = ""

    @property
    def is_engine(self) -> bool:
        return self.kind == "engine"


def _timestamp(started_at: datetime | float) -> float:
    if isinstance(started_at, datetime):
        if started_at.tzinfo is None:
            raise ValueError(f"task start {started_at.isoformat()} has no time zone; cannot compare it "
                             "with a process start time")
        return started_at.timestamp()
    return float(started_at)


def _executable(proc: psutil.Process) -> tuple[str | None, str]:
    """(path, how it was read). psutil's own `exe()` silently guesses from argv[0] when the link
    is unreadable; here the fallback is explicit, so a verdict says which one decided."""
    try:
        path = os.readlink(f"/proc/{proc.pid}/exe")
        return path.removesuffix(" (deleted)"), "exe"  # an engine binary upgraded while it runs
    except FileNotFoundError:
        if not os.path.isdir("/proc/self"):  # not Linux: psutil's exe() has no guessing there
            return proc.exe() or None, "exe"
        if proc.is_running():
            return None, "exe"  # a kernel thread: no executable at all
        raise psutil.NoSuchProcess(proc.pid) from None
    except PermissionError:
        argv = proc.cmdline()
        return (argv[0] if argv else None), "argv[0]"


def _same_program(actual: str, engine: str) -> bool:
    if "/" in engine:
        return actual == engine
    return os.path.basename(actual) == engine


def _owner_matches(proc: psutil.Process, owner: str) -> tuple[bool, str]:
    uid = proc.uids().real
    try:
        name = proc.username()
    except (KeyError, psutil.Error):  # a uid with no passwd entry
        name = str(uid)
    return owner in (name, str(uid)), name


def judge(proc: psutil.Process, engine: str, owner: str | None, started_at: datetime | float | None) -> Verdict:
    """The verdict for a process already looked up (so a caller can signal that very object:
    psutil refuses to signal a PID reused since the object was made)."""
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return Verdict("gone", "exited (zombie not yet reaped)")
        path, source = _executable(proc)
        if path is None:
            return Verdict("not_engine", f"it has no {source} (a kernel thread, or an empty command line)")
        if not _same_program(path, engine):
            return Verdict("not_engine", f"its {source} is {path!r}, not {engine!r}")
        if owner is not None:
            matches, name = _owner_matches(proc, owner)
            if not matches:
                return Verdict("not_engine", f"owned by {name!r}, not {owner!r}")
        if started_at is not None:
            created, started = proc.create_time(), _timestamp(started_at)
            if created > started + START_TOLERANCE:
                return Verdict("not_engine", f"created {created - started:.0f}s after its task started: a reused PID")
    except psutil.NoSuchProcess:  # ZombieProcess included: it has exited
        return Verdict("gone", "no such process")
    except psutil.AccessDenied as e:
        return Verdict("unknown", f"access denied ({e.msg or 'cannot read the process'})")
    return Verdict("engine", f"{source} {path!r}")


def judge_engine(pid: int, engine: str, owner: str | None, started_at: datetime | float | None) -> Verdict:
    """Is `pid` the engine of a task that started at `started_at` (a time-zone aware datetime or
    a Unix timestamp; None only when the task system records no start — then a reused PID whose
    executable is the engine's cannot be told apart)?"""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return Verdict("gone", "no such process")
    except psutil.AccessDenied as e:
        return Verdict("unknown", f"access denied ({e.msg or 'cannot read the process'})")
    return judge(proc, engine, owner, started_at)


def visible_engines(engine: str, owner: str | None) -> int:
    """How many live processes this host (PID namespace) shows running the engine: zero means
    the engines cannot be seen from here, and every recorded PID would look gone."""
    count = 0
    for proc in psutil.process_iter():
        if judge(proc, engine, owner, None).is_engine:
            count += 1
    return count
