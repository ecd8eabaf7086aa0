"""`targets: stuck`: the tasks that the detection rule of the alert's (system, reason) judges
stuck now — the exporter's own rule (profile, overrides, timezone, thresholds, liveness checks)
re-run by the same code, so the remediator acts on exactly what `taskmedic_stuck_tasks` counts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TypeVar

from taskmedic import processes
from taskmedic.config.model import StuckRule, System
from taskmedic.connections import Connections
from taskmedic.detection import harbor
from taskmedic.detection.base import Inventory, JudgementUnknown, Row, Targets, TargetsRefused, selected
from taskmedic.detection.judges import compile_match, engine_visible, judge
from taskmedic.detection.progress import ProgressTracker
from taskmedic.detection.sql import build_live_query, build_rows_query, clock_problem, clock_skew, judged_column

T = TypeVar("T")

# What this process has seen of engines' CPU time, and how long an engine it has not watched for a
# whole progress window is sampled at action time (see taskmedic.detection.progress).
TRACKER = ProgressTracker()
ACTION_TIME_SAMPLE = 3.0


async def _in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


async def stuck_targets(system_name: str, system: System, reason: str, connections: Connections,
                        limit: int) -> list[Row]:
    """The rows rule `reason` of this system judges stuck now, oldest first, at most `limit`
    (pid and worker checks look at no more candidates than the exporter does)."""
    tasks = system.tasks
    assert tasks is not None and system.database is not None
    rule = tasks.stuck[reason]
    if rule.kind == "harbor":
        return await _harbor_targets(system, rule, connections, limit)
    judged = judged_column(rule)
    fetch = limit if judged is None else max(limit, tasks.max_rows_checked)
    sql, params = build_rows_query(tasks, rule, fetch)
    pool = await connections.pg(system.database, system.timezone, system.timeout)
    async with pool.acquire() as conn:
        live = build_live_query(tasks)
        problem = clock_problem(clock_skew(await conn.fetch(live.sql, *live.params)), tasks)
        if problem is not None:
            raise TargetsRefused(f"{system_name}: {problem}")
        rows = [dict(r) for r in await conn.fetch(sql, *params)]
    if judged is None:
        return rows
    pattern = compile_match(rule)
    try:
        verdicts = await judge(rule, [r["judged"] for r in rows], system, connections, _in_thread, pattern,
                               TRACKER, ACTION_TIME_SAMPLE)
    except JudgementUnknown as e:
        raise TargetsRefused(f"{system_name}/{reason}: unknown, so nothing is judged stuck: {e}") from None
    stuck = [{k: v for k, v in r.items() if k != "judged"} for r, gone in zip(rows, verdicts, strict=True) if gone]
    all_gone = bool(stuck) and len(stuck) == len(rows)
    if rule.kind == "pid" and rule.engine is not None and rule.progress_window is None and all_gone \
            and not await asyncio.to_thread(processes.visible_engines, rule.engine, rule.owner):
        raise TargetsRefused(f"{system_name}/{reason}: no process running the engine {rule.engine!r} is visible "
                             "from here, so every task would look gone; run where the engines' PIDs are visible")
    if rule.kind == "pid" and pattern is not None and all_gone \
            and not await asyncio.to_thread(engine_visible, pattern):
        raise TargetsRefused(f"{system_name}/{reason}: no process matching {rule.process_match!r} is visible "
                             "from here, so every task would look gone; run where the engines' PIDs are visible")
    return stuck[:limit]


async def _harbor_targets(system: System, rule: StuckRule, connections: Connections, limit: int) -> list[Row]:
    assert system.database is not None and system.redis is not None
    pool = await connections.pg(system.database, system.timezone, system.timeout)
    async with pool.acquire() as conn:
        return await harbor.stuck_executions(conn, connections.redis(system.redis), rule, limit)


class StuckKind:
    name = "stuck"
    verifiable = True

    async def find(self, labels: Mapping[str, str], inventory: Inventory, connections: Connections,
                   limit: int) -> Targets:
        with_tasks = [n for n, s in inventory.systems.items() if s.tasks is not None]
        system_name = selected(labels, "system", with_tasks, "system with a task table")
        system = inventory.systems[system_name]
        assert system.tasks is not None
        reason = selected(labels, "reason", list(system.tasks.stuck), f"stuck rule of {system_name}")
        rows = await stuck_targets(system_name, system, reason, connections, limit + 1)
        return Targets(self.name, f"{system_name}/{reason}", system_name, rows[:limit], len(rows) > limit)


