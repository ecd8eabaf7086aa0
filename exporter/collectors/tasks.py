"""TaskCollector: counts, oldest age and stuck tasks of one system's PostgreSQL task table.

One round trip per cycle: a UNION ALL with one branch per live status, each branch served by
the status index, so the cost follows the live tasks, not the history. Terminal statuses are
counted by a second query only every `history_interval`. Ages use the database's `now()`.
PID and worker checks fetch the candidate values (capped) in the same round trip and judge
them with psutil or the live set in Redis. The rules themselves (SQL and judges) live in
`taskmedic.detection`, where the remediator finds the very rows counted here.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from exporter.collectors.base import BlockingCalls, SystemCollector
from exporter.config import ExporterConfig
from exporter.metrics import Sample, sample
from taskmedic.config.model import StuckRule, TaskTable
from taskmedic.connections import Connections
from taskmedic.detection import harbor
from taskmedic.detection.base import JudgementUnknown
from taskmedic.detection.judges import compile_match, judge
from taskmedic.detection.progress import ProgressTracker
from taskmedic.detection.sql import LiveQuery, build_live_query, build_terminal_query, clock_problem, clock_skew

log = logging.getLogger("taskmedic.exporter.tasks")


@dataclass
class TaskCollector(SystemCollector):
    tasks: TaskTable = field(kw_only=True)
    _live: LiveQuery = field(init=False)
    _terminal_sql: str = field(init=False)
    _terminal: dict[str, int] = field(default_factory=dict)
    _terminal_at: float = float("-inf")
    _patterns: dict[str, re.Pattern[str] | None] = field(default_factory=dict)
    _doubts: list[str] = field(default_factory=list)
    _progress: ProgressTracker = field(default_factory=ProgressTracker)
    _blocking: BlockingCalls = field(default_factory=BlockingCalls, init=False, repr=False)

    def __post_init__(self) -> None:
        self._live = build_live_query(self.tasks)
        self._terminal_sql = build_terminal_query(self.tasks)
        self._patterns = {r: compile_match(rule) for r, rule in self.tasks.stuck.items()}

    @property
    def name(self) -> str:
        return f"tasks:{self.system_name}"

    async def collect(self) -> list[Sample]:
        assert self.system.database is not None
        pool = await self.connections.pg(self.system.database, self.system.timezone, self.system.timeout)
        async with pool.acquire() as conn:
            rows = await conn.fetch(self._live.sql, *self._live.params)
            if self.tasks.terminal and time.monotonic() - self._terminal_at >= self.tasks.history_interval:
                counted = await conn.fetch(self._terminal_sql, self.tasks.terminal)
                self._terminal = {r["status"]: r["n"] for r in counted}
                self._terminal_at = time.monotonic()
            judged = {reason: await self._dangling_executions(conn, rule) for reason, rule in self.tasks.stuck.items()
                      if rule.kind == "harbor"}
        return await self._samples(rows, judged)

    async def _dangling_executions(self, conn: Any, rule: StuckRule) -> int:
        """Harbor: executions with a Running task whose job no live pool has in progress. A Redis
        error propagates: the judgement is unknown, so the collector fails rather than report 0."""
        assert rule.harbor_job_service is not None and self.system.redis is not None
        client = self.connections.redis(self.system.redis)
        tasks, _ = await harbor.dangling(conn, client, rule, self.tasks.max_rows_checked)
        return len({t.execution_id for t in tasks})

    async def _samples(self, rows: list[Any], judged: dict[str, int]) -> list[Sample]:
        system = self.system_name
        out: list[Sample] = []
        by_branch = {r["branch"]: r for r in rows}
        stuck: dict[str, int] = {}
        skew = clock_skew(rows)
        doubts = [p for p in [clock_problem(skew, self.tasks)] if p]
        for i, status in enumerate(self.tasks.live):
            row = by_branch[i]
            out.append(sample("taskmedic_tasks", row["n"], system=system, status=status))
            if status in self.tasks.age_columns:
                out.append(sample("taskmedic_task_oldest_age_seconds", max(row["oldest"] or 0.0, 0.0),
                                  system=system, status=status))
            for j, (reason, rule) in enumerate(self._live.rules):
                if rule.status == status:
                    try:
                        stuck[reason] = (judged[reason] if reason in judged
                                         else await self._judge(reason, rule, row[f"r{j}"]))
                    except JudgementUnknown as e:
                        doubts.append(f"{reason}: {e}")
        if doubts != self._doubts:  # said once when it starts or changes, not every cycle
            for doubt in doubts:
                log.warning("judgement not trusted", extra={"system": system, "why": doubt})
            self._doubts = doubts
        out.append(sample("taskmedic_judgement_trusted", 0 if doubts else 1, system=system))
        out.append(sample("taskmedic_clock_skew_seconds", skew, system=system))
        for status in self.tasks.terminal:
            out.append(sample("taskmedic_tasks", self._terminal.get(status, 0), system=system, status=status))
        for reason, rule in self.tasks.stuck.items():
            out.append(sample("taskmedic_stuck_tasks", stuck.get(reason, 0), system=system,
                              status=rule.status, reason=reason))
        return out

    async def _judge(self, reason: str, rule: StuckRule, value: Any) -> int:
        if rule.kind == "age":
            return int(value or 0)
        verdicts = await judge(rule, list(value or []), self.system, self.connections, self._blocking.run,
                               self._patterns[reason], self._progress)
        return sum(verdicts)


def build(config: ExporterConfig, connections: Connections) -> list[TaskCollector]:
    return [TaskCollector(name, s, connections, tasks=s.tasks)
            for name, s in config.systems.items() if s.tasks is not None]
