"""Executing one playbook for one alert: precheck, steps, commit or roll back, verify.

The engine knows nothing about the journal; the worker (and `simulate`) call `execute` and
record what it reports. All SQL of a run on one system is one transaction, committed only when
every step succeeded and the run is not a dry run; anything else — a failed or refused step, a
timeout, a cancelled run (SIGTERM, lost lease, killed process) — leaves nothing of it behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from typing import Any

import asyncpg
from redis.exceptions import RedisError

from remediator.config import Check, Playbook, RedisCheck, SqlCheck, Step
from remediator.matching import AlertInfo
from remediator.steps import STEP_TYPES, Refused, RunContext, StepFailed, StepResult, Transactions
from remediator.steps.base import Row
from remediator.steps.sql import as_text, fetch_at_most
from remediator.templating import RenderError, render, render_all
from taskmedic.config.model import System
from taskmedic.connections import Connections

log = logging.getLogger("taskmedic.remediator.run")


@dataclass
class StepRecord:
    name: str
    type: str
    outcome: str  # ok | dry_run | failed | refused | interrupted (the run was cancelled during it)
    rows: int = 0
    duration_seconds: float = 0.0
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    kept: bool = False  # it changed something outside the run's SQL transaction: no rollback undoes it


def kept_effects(records: list[StepRecord]) -> str:
    """What a failed or refused run leaves done: the earlier steps that acted outside its SQL transaction."""
    kept = [f"step {r.name!r} ({r.type}, {r.rows} affected)" for r in records if r.kept and r.outcome == "ok"]
    return f"; kept, not rolled back: {', '.join(kept)}" if kept else ""


@dataclass
class Report:
    outcome: str
    steps: list[StepRecord] = field(default_factory=list)
    error: str | None = None
    dry_run: bool = False
    precheck: float | None = None
    verify: float | None = None

    def steps_json(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.steps]


def _number(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool | int | float | Decimal):
        return float(value)
    raise StepFailed(f"a check must return a number, got {value!r}")


class Engine:
    def __init__(self, systems: Mapping[str, System], connections: Connections, statement_timeout: float) -> None:
        self.systems = systems
        self.connections = connections
        self.statement_timeout = statement_timeout

    async def execute(self, playbook: Playbook, alert: AlertInfo, dry_run: bool, run_id: int | None = None,
                      report: Report | None = None) -> Report:
        """Run the playbook, filling `report` (a new one if not given) as it goes: a caller that
        cancels the run (timeout) keeps the steps done so far, the interrupted one included."""
        dry_run = dry_run or playbook.dry_run
        variables = alert.variables()
        report = report if report is not None else Report(outcome="failed")
        report.outcome, report.dry_run = "failed", dry_run
        if playbook.precheck is not None:
            try:
                report.precheck = await self.measure(playbook.precheck, variables)
            except StepFailed as e:
                report.error = f"precheck: {e}"
                return report
            if report.precheck == playbook.precheck.expect:
                report.outcome = "skipped"
                return report
        report.outcome, report.error = await self._steps(playbook, variables, dry_run, report.steps, run_id)
        if report.outcome == "succeeded" and playbook.verify is not None:
            await self._verify(playbook.verify, variables, report)
        return report

    async def _steps(self, playbook: Playbook, variables: dict[str, Any], dry_run: bool,
                     records: list[StepRecord], run_id: int | None) -> tuple[str, str | None]:
        transactions = Transactions(self.connections, self.statement_timeout)
        ctx = RunContext(playbook=playbook.name, variables=variables, dry_run=dry_run, systems=self.systems,
                         connections=self.connections, transactions=transactions, log=log)
        settled = False
        try:
            for step in playbook.steps:
                record = StepRecord(name=step.name, type=step.kind, outcome="dry_run" if dry_run else "ok")
                records.append(record)
                await self._step(step, ctx, run_id, record)
                if record.outcome in ("failed", "refused"):
                    return record.outcome, f"step {step.name!r}: {record.error}{kept_effects(records[:-1])}"
            await transactions.settle(commit=not dry_run)
            settled = True
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as e:
            return "failed", f"commit: {type(e).__name__}: {e}"
        except Exception as e:  # unforeseen: this run fails, the replica goes on
            log.exception("commit: unexpected error", extra={"run_id": run_id, "playbook": playbook.name})
            return "failed", f"commit: {type(e).__name__}: {e}"
        finally:
            if not settled:
                await transactions.abandon()
        return ("dry_run" if dry_run else "succeeded"), None

    async def _step(self, step: Step, ctx: RunContext, run_id: int | None, record: StepRecord) -> None:
        started = time.monotonic()
        ctx = replace(ctx, progress=record.detail)
        try:
            result = await (self._each(step, ctx) if step.for_each else STEP_TYPES[step.kind].run(step.spec, ctx))
            record.rows, record.detail, record.kept = result.rows, result.detail, result.kept and not ctx.dry_run
            if result.rows_returned is not None:
                ctx.outputs[step.name] = result.rows_returned
        except (Refused, StepFailed) as e:
            record.outcome = "refused" if isinstance(e, Refused) else "failed"
            record.error, record.detail = str(e), e.detail
        except (asyncpg.PostgresError, asyncpg.InterfaceError, RedisError, OSError) as e:
            record.outcome, record.error = "failed", f"{type(e).__name__}: {e}"
        except Exception as e:  # a bug, or an input no guard foresaw: this run fails, the replica goes on
            record.outcome, record.error = "failed", f"{type(e).__name__}: {e}"
            log.exception("step %s: unexpected error", step.name, extra={
                "run_id": run_id, "playbook": ctx.playbook, "step": step.name, "type": step.kind})
        except asyncio.CancelledError:  # the run's timeout or a shutdown; record.detail is its progress
            record.outcome, record.error = "interrupted", "cancelled while running (run timeout or shutdown)"
            record.duration_seconds = round(time.monotonic() - started, 4)
            raise
        record.duration_seconds = round(time.monotonic() - started, 4)
        log.info("step %s: %s", step.name, record.outcome,
                 extra={"run_id": run_id, "playbook": ctx.playbook, "step": step.name, "type": step.kind,
                        "outcome": record.outcome, "rows": record.rows, "duration_seconds": record.duration_seconds,
                        "error": record.error, "dry_run": ctx.dry_run})

    async def _each(self, step: Step, ctx: RunContext) -> StepResult:
        """Run the step once per output row of `for_each`, that row being `item` in its templates.
        Each run keeps its own guard; the rows it outputs are gathered for later steps."""
        assert step.for_each is not None
        items = ctx.outputs.get(step.for_each, [])
        total = StepResult(detail={"for_each": step.for_each, "items": len(items), "each": []}, kept=False)
        kept: list[Row] = []
        for item in items:
            result = await STEP_TYPES[step.kind].run(step.spec, replace(ctx, variables={**ctx.variables,
                                                                                        "item": item}))
            total.rows += result.rows
            total.kept |= result.kept
            if len(total.detail["each"]) < 20:
                total.detail["each"].append(result.detail)
            kept += result.rows_returned or []
        total.rows_returned = kept
        return total

    async def _verify(self, check: Check, variables: dict[str, Any], report: Report) -> None:
        await asyncio.sleep(check.delay)
        try:
            report.verify = await self.measure(check, variables)
        except StepFailed as e:
            report.outcome, report.error = "failed", f"verify: {e}"
            return
        if report.verify != check.expect:
            report.outcome = "failed"
            report.error = f"verify: the problem remains (check says {report.verify:g}, healthy is {check.expect:g})"

    async def measure(self, check: Check, variables: dict[str, Any]) -> float:
        """The check's number, read outside the run's transaction (read-only for SQL)."""
        try:
            if check.sql is not None:
                return await self._measure_sql(check.sql, variables)
            assert check.redis is not None
            return await self._measure_redis(check.redis, variables)
        except RenderError as e:
            raise StepFailed(str(e)) from None
        except (asyncpg.PostgresError, asyncpg.InterfaceError, RedisError, OSError) as e:
            raise StepFailed(f"{type(e).__name__}: {e}") from None
        except Exception as e:
            log.exception("check: unexpected error")
            raise StepFailed(f"{type(e).__name__}: {e}") from None

    async def _measure_sql(self, check: SqlCheck, variables: dict[str, Any]) -> float:
        system = self.systems[check.system]
        assert system.database is not None  # checked when the playbooks were loaded
        values = render_all([as_text(p) for p in check.params], variables)
        pool = await self.connections.pg(system.database, system.timezone, self.statement_timeout)
        async with pool.acquire() as conn, conn.transaction(readonly=True):
            rows = await fetch_at_most(conn, check.query, values, 1)  # only its first row counts
        return _number(rows[0][0] if rows and len(rows[0]) else None)

    async def _measure_redis(self, check: RedisCheck, variables: dict[str, Any]) -> float:
        url = self.systems[check.system].redis
        assert url is not None  # checked when the playbooks were loaded
        client = self.connections.redis(url)
        return _number(await getattr(client, check.count)(render(check.key, variables)))
