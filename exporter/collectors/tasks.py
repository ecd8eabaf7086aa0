"""TaskCollector: counts, oldest age and stuck tasks of one system's PostgreSQL task table.

One round trip per cycle: a UNION ALL with one branch per live status, each branch served by
the status index, so the cost follows the live tasks, not the history. Terminal statuses are
counted by a second query only every `history_interval`. Ages use the database's `now()`.
PID and worker checks fetch the candidate values (capped) in the same round trip and judge
them here: PIDs with psutil, workers against the live set in Redis.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from exporter.collectors.base import BlockingCalls, SystemCollector
from exporter.config import ExporterConfig
from exporter.metrics import Sample, sample
from taskmedic import harbor
from taskmedic.config.model import StuckRule, TaskTable
from taskmedic.connections import Connections


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def source_sql(tasks: TaskTable) -> str:
    if tasks.table is not None:
        return ".".join(quote_ident(p) for p in tasks.table.split("."))
    return f"({tasks.query})"


@dataclass(frozen=True)
class LiveQuery:
    """The SQL of the live query and how to read its rows back."""

    sql: str
    params: list[Any]
    rules: list[tuple[str, StuckRule]]  # column order of the rule results


def _rule_predicate(rule: StuckRule, params: list[Any]) -> str:
    """SQL that is true for a row this rule judges (age checks: stuck; others: a candidate)."""
    parts: list[str] = []
    if rule.age is not None and rule.min_age:
        params.append(rule.min_age)
        parts.append(f"{quote_ident(rule.age)} < now() - make_interval(secs => ${len(params)})")
    if rule.kind == "age":
        assert rule.age is not None
        if rule.max_age is not None:
            params.append(rule.max_age)
            parts.append(f"{quote_ident(rule.age)} < now() - make_interval(secs => ${len(params)})")
        else:
            parts.append(f"{quote_ident(rule.age)} < now() - ({rule.max_age_sql})")
    if rule.where:
        parts.append(f"({rule.where})")
    return " and ".join(parts) or "true"


def build_live_query(tasks: TaskTable) -> LiveQuery:
    params: list[Any] = []
    rules = list(tasks.stuck.items())
    status = quote_ident(tasks.status_column)
    branches = []
    for i, st in enumerate(tasks.live):
        params.append(st)
        where = f"{status} = ${len(params)}"
        age_col = tasks.age_columns.get(st)
        oldest = (f"extract(epoch from now() - min({quote_ident(age_col)}))::float8" if age_col
                  else "null::float8")
        cols = [f"{i} as branch", "count(*) as n", f"{oldest} as oldest"]
        for j, (_, rule) in enumerate(rules):
            if rule.kind == "harbor":  # judged by taskmedic.harbor, not in this query
                cols.append(f"null::bigint as r{j}")
                continue
            if rule.status != st:
                cols.append(f"null::bigint as r{j}" if rule.kind == "age" else f"null::text[] as r{j}")
                continue
            pred = _rule_predicate(rule, params)
            if rule.kind == "age":
                cols.append(f"count(*) filter (where {pred}) as r{j}")
            else:
                column = quote_ident(str(rule.pid if rule.kind == "pid" else rule.worker))
                cols.append(f"(array_agg({column}::text) filter (where {pred} and {column} is not null))"
                            f"[1:{tasks.max_rows_checked}] as r{j}")
        branches.append(f"select {', '.join(cols)} from {source_sql(tasks)} as src where {where}")
    return LiveQuery(" union all ".join(branches), params, rules)


def build_terminal_query(tasks: TaskTable) -> str:
    status = quote_ident(tasks.status_column)
    return (f"select {status}::text as status, count(*) as n from {source_sql(tasks)} as src "
            f"where {status} = any($1) group by 1")


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


@dataclass
class TaskCollector(SystemCollector):
    tasks: TaskTable = field(kw_only=True)
    _live: LiveQuery = field(init=False)
    _terminal_sql: str = field(init=False)
    _terminal: dict[str, int] = field(default_factory=dict)
    _terminal_at: float = float("-inf")
    _patterns: dict[str, re.Pattern[str] | None] = field(default_factory=dict)
    _blocking: BlockingCalls = field(default_factory=BlockingCalls, init=False, repr=False)

    def __post_init__(self) -> None:
        self._live = build_live_query(self.tasks)
        self._terminal_sql = build_terminal_query(self.tasks)
        self._patterns = {r: re.compile(rule.process_match) if rule.process_match else None
                          for r, rule in self.tasks.stuck.items()}

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
        service = rule.harbor_job_service
        client = self.connections.redis(self.system.redis)
        tasks, _ = await harbor.dangling(conn, client, harbor.Keys(service.namespace), rule.status, rule.min_age,
                                         service.dead_after, self.tasks.max_rows_checked)
        return len({t.execution_id for t in tasks})

    async def _samples(self, rows: list[Any], judged: dict[str, int]) -> list[Sample]:
        system = self.system_name
        out: list[Sample] = []
        by_branch = {r["branch"]: r for r in rows}
        stuck: dict[str, int] = {}
        for i, status in enumerate(self.tasks.live):
            row = by_branch[i]
            out.append(sample("taskmedic_tasks", row["n"], system=system, status=status))
            if status in self.tasks.age_columns:
                out.append(sample("taskmedic_task_oldest_age_seconds", max(row["oldest"] or 0.0, 0.0),
                                  system=system, status=status))
            for j, (reason, rule) in enumerate(self._live.rules):
                if rule.status == status:
                    stuck[reason] = (judged[reason] if reason in judged
                                     else await self._judge(reason, rule, row[f"r{j}"]))
        for status in self.tasks.terminal:
            out.append(sample("taskmedic_tasks", self._terminal.get(status, 0), system=system, status=status))
        for reason, rule in self.tasks.stuck.items():
            out.append(sample("taskmedic_stuck_tasks", stuck.get(reason, 0), system=system,
                              status=rule.status, reason=reason))
        return out

    async def _judge(self, reason: str, rule: StuckRule, value: Any) -> int:
        if rule.kind == "age":
            return int(value or 0)
        candidates: list[str] = list(value or [])
        if not candidates:
            return 0
        if rule.kind == "pid":
            pattern = self._patterns[reason]
            gone = await self._blocking.run(lambda: [process_gone(p, pattern) for p in candidates])
            return sum(gone)
        assert rule.live_workers is not None and self.system.redis is not None
        client, workers = self.connections.redis(self.system.redis), rule.live_workers
        if workers.key_prefix is not None:
            async with client.pipeline(transaction=False) as pipe:
                for worker in candidates:
                    pipe.exists(workers.key_prefix + worker)
                return sum(1 for alive in await pipe.execute() if not alive)
        assert workers.redis_set is not None
        members = await client.smembers(workers.redis_set)
        names = {(m.decode(errors="replace") if isinstance(m, bytes) else m).removeprefix(workers.member_prefix)
                 for m in members}
        return sum(1 for w in candidates if w not in names)


def build(config: ExporterConfig, connections: Connections) -> list[TaskCollector]:
    return [TaskCollector(name, s, connections, tasks=s.tasks)
            for name, s in config.systems.items() if s.tasks is not None]
