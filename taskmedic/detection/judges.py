"""Judging the candidates of pid, worker and celery checks, outside SQL: is the engine process
still there (and progressing), is the worker still alive. The exporter counts what these return;
the remediator acts on it.

A pid rule with `engine` judges engine identity (`taskmedic.processes`: executable, owner,
created before the task started) and, with `progress_window`, progress (`progress`). A pid rule
with only `process_match` keeps the older name/command-line match (`process_gone` below).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import psutil

from taskmedic.config.model import StuckRule, System
from taskmedic.connections import Connections
from taskmedic.detection.celery_workers import working_rows
from taskmedic.detection.progress import ProgressTracker, judge_engines

RunBlocking = Callable[[Callable[[], Any]], Any]  # awaitable: runs the call off the event loop


def process_gone(pid_text: str, pattern: re.Pattern[str] | None) -> bool:
    """True when no process has this PID, or the one that has it is not the engine."""
    try:
        pid = int(pid_text)
        if pid <= 0:
            return True
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        if pattern is None:
            return False
        cmdline = " ".join(proc.cmdline())
        return not (pattern.search(proc.name()) or pattern.search(cmdline))
    except ValueError:
        return True
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False  # it exists; we may not read it


def engine_visible(pattern: re.Pattern[str]) -> bool:
    """Whether any live process matching the engine's pattern can be seen from here. A process in
    another PID namespace sees none, and every PID would look gone."""
    for proc in psutil.process_iter(["name", "cmdline", "status"], ad_value=None):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if (info["name"] and pattern.search(info["name"])) or \
                (info["cmdline"] and pattern.search(" ".join(info["cmdline"]))):
            return True
    return False


def compile_match(rule: StuckRule) -> re.Pattern[str] | None:
    return re.compile(rule.process_match) if rule.process_match else None


async def judge(rule: StuckRule, candidates: Sequence[str], system: System, connections: Connections,
                run_blocking: RunBlocking, pattern: re.Pattern[str] | None = None,
                tracker: ProgressTracker | None = None, confirm: float = 0.0) -> list[bool]:
    """For each candidate value of a pid/worker/celery check, whether it makes its row stuck
    (JudgementUnknown when the evidence cannot be had)."""
    if not candidates:
        return []
    if rule.celery_active is not None:
        check = rule.celery_active
        broker = check.broker or system.redis
        assert broker is not None
        url, scan = broker.get_secret_value(), max(len(candidates), 1000)
        working: set[str] = await run_blocking(lambda: working_rows(check, url, scan))
        return [c not in working for c in candidates]
    if rule.kind == "pid" and rule.engine is not None:
        values, watch = list(candidates), tracker or ProgressTracker()
        engines: list[bool] = await run_blocking(lambda: judge_engines(values, rule, watch, confirm))
        return engines
    if rule.kind == "pid":
        values = list(candidates)
        result: list[bool] = await run_blocking(lambda: [process_gone(p, pattern) for p in values])
        return result
    assert rule.kind == "worker" and rule.live_workers is not None and system.redis is not None
    client, workers = connections.redis(system.redis), rule.live_workers
    if workers.key_prefix is not None:
        async with client.pipeline(transaction=False) as pipe:
            for worker in candidates:
                pipe.exists(workers.key_prefix + worker)
            return [not alive for alive in await pipe.execute()]
    assert workers.redis_set is not None
    members = await client.smembers(workers.redis_set)
    names = {(m.decode(errors="replace") if isinstance(m, bytes) else m).removeprefix(workers.member_prefix)
             for m in members}
    return [w not in names for w in candidates]
