"""Process-backed tasks (scanner): is the recorded PID still the task's engine
(`taskmedic.processes`: executable, owner, created before the task started), and is that engine
progressing — gaining CPU time — or alive but hung?

Progress needs two looks at a process: each process that judges keeps a `ProgressTracker`, keyed
by (PID, creation time) so a reused PID starts afresh. The exporter looks every cycle: an engine
that gained no CPU time for `progress_window` is `no_progress`. The remediator acts on the
alert the exporter raised and re-checks at action time: an engine it has watched for less than
the window is sampled over `confirm` seconds, and one that gained CPU time meanwhile is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

from taskmedic import processes
from taskmedic.config.model import StuckRule

FORGET_AFTER = 3600.0  # an engine not looked at for this long is forgotten


def pid_and_start(value: str) -> tuple[int | None, float | None]:
    """The `"<pid> <task start epoch>"` text `sql.judged_sql` builds; a start may be missing."""
    parts = value.split()
    try:
        pid = int(parts[0]) if parts else None
    except ValueError:
        return None, None
    try:
        start = float(parts[1]) if len(parts) > 1 else None
    except ValueError:
        start = None
    return (pid if pid is not None and pid > 0 else None), start


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU time the engine and its reaped children have used."""
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Seen:
    cpu: float
    advanced_at: float  # when its CPU time was last seen to grow (or first seen)
    looked_at: float


class ProgressTracker:
    def __init__(self) -> None:
        self._seen: dict[tuple[int, float], Seen] = {}

    def look(self, proc: psutil.Process, now: float) -> Seen:
        """Record a look at this process; its record, updated."""
        key, cpu = (proc.pid, proc.create_time()), cpu_seconds(proc)
        seen = self._seen.get(key)
        if seen is None or cpu > seen.cpu:
            seen = self._seen[key] = Seen(cpu, now, now)
        seen.looked_at = now
        return seen

    def forget_stale(self, now: float) -> None:
        for key in [k for k, s in self._seen.items() if now - s.looked_at > FORGET_AFTER]:
            del self._seen[key]


def engine_process(value: str, rule: StuckRule) -> tuple[processes.Verdict, psutil.Process | None]:
    assert rule.engine is not None
    pid, started = pid_and_start(value)
    if pid is None:
        return processes.Verdict("gone", f"no usable PID in {value!r}"), None
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return processes.Verdict("gone", "no such process"), None
    except psutil.AccessDenied:
        return processes.Verdict("unknown", "access denied"), None
    return processes.judge(proc, rule.engine, rule.owner, started), proc


def judge_engines(values: Sequence[str], rule: StuckRule, tracker: ProgressTracker,
                  confirm: float = 0.0) -> list[bool]:
    """Blocking. Without `progress_window`: stuck when the PID is gone or is not the task's engine
    (process_gone; "cannot tell" is not stuck). With it: stuck when the engine is alive but gained
    no CPU time for the window (no_progress); with `confirm`, an engine not yet watched that long
    is sampled over `confirm` seconds instead."""
    judged = [engine_process(v, rule) for v in values]
    if rule.progress_window is None:
        return [v.kind in ("gone", "not_engine") for v, _ in judged]
    window, now = rule.progress_window, time.monotonic()
    engines = {i: p for i, (v, p) in enumerate(judged) if v.is_engine and p is not None}
    stalled: dict[int, bool] = {}
    first: dict[int, float] = {}  # CPU time at this look
    for i, proc in engines.items():
        try:
            seen = tracker.look(proc, now)
        except psutil.Error:
            continue  # it ended while we looked: process_gone's business
        first[i] = seen.cpu
        stalled[i] = now - seen.advanced_at >= window
    unsure = [i for i in first if not stalled[i]] if confirm > 0 else []
    if unsure:
        time.sleep(confirm)
        for i in unsure:
            try:
                stalled[i] = cpu_seconds(engines[i]) <= first[i]
            except psutil.Error:
                stalled[i] = False
    tracker.forget_stale(now)
    return [stalled.get(i, False) for i in range(len(values))]
