"""Executing one playbook for one alert: precheck, targets, steps, commit or roll back, verify.

With `targets:` the engine first re-runs the detection rule the alert's labels select (the
exporter's own rule and code, `taskmedic.detection`): no rows → `skipped`; labels naming nothing
configured, or more rows than a step may touch → `refused` before any step. `verify: targets`
re-runs it afterwards: a target still found stuck fails the run.

The engine knows nothing about the journal; the worker (and `simulate`) call `execute` and
record what it reports. All SQL of a run on one system is one transaction, committed only when
every step succeeded and the run is not a dry run; anything else — a failed or refused step, a
timeout, a cancelled run (SIGTERM, lost lease, killed process) — leaves nothing of it behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from typing import Any

import asyncpg
from redis.exceptions import RedisError

from remediator.alert import AlertInfo, Outcome
from remediator.config import TARGETS, Check, Playbook, RedisCheck, SqlCheck, Step
from remediator.labels import templates
from remediator.steps import STEP_TYPES, Refused, RunContext, StepFailed, StepResult, Transactions
from remediator.steps.base import Row, TargetRows, reads_targets
from remediator.steps.sql import as_text, fetch_at_most
from remediator.templating import RenderError, render, render_all
from taskmedic.config.model import Backup, Disk, System
from taskmedic.connections import Connections
from taskmedic.detection import TARGET_KINDS, Inventory, Targets, TargetsRefused

log = logging.getLogger("taskmedic.remediator.run")

TARGET_LIMIT = 10_000  # rows re-found at most; more is refused as "too many", never cut short
SHOWN_TARGETS = 50  # rows shown by simulate (the sql step journals the ids it bound)
# The key of each step type's own blast-radius limit, compared with the number of targets.
STEP_LIMITS = {"sql": "max_rows", "redis": "max_items", "files": "max_entries"}


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
    outcome: Outcome
    steps: list[StepRecord] = field(default_factory=list)
    error: str | None = None
    dry_run: bool = False
    precheck: float | None = None
    verify: float | None = None
    targets: Targets | None = None

    def targets_json(self) -> dict[str, Any] | None:
        t = self.targets
        if t is None:
            return None
        return {"kind": t.kind, "subject": t.subject, "system": t.system, "count": len(t.rows),
                "rows": t.rows[:SHOWN_TARGETS]}

    def steps_json(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.steps]


def _number(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool | int | float | Decimal):
        return float(value)
    raise StepFailed(f"a check must return a number, got {value!r}")


def _targets_problem(playbook: Playbook, targets: Targets) -> str | None:
    """Why these targets must not be acted on, before any step runs: a step acting on another
    system than the targets', or more targets than a step that takes them all at once may touch."""
    for step in playbook.steps:
        uses = step.for_each == TARGETS or any(reads_targets(t) for _, t in templates(step.spec, ()))
        if not uses:
            continue
        system = getattr(step.spec, "system", None)
        if targets.system is not None and system is not None and system != targets.system:
            return (f"step {step.name!r} acts on system {system!r} but the targets are {targets.subject} "
                    f"of system {targets.system!r}")
        limit = getattr(step.spec, STEP_LIMITS.get(step.kind, ""), None)
        if step.for_each is None and isinstance(limit, int) and len(targets.rows) > limit:
            return (f"{len(targets.rows)} targets ({targets.subject}), more than step {step.name!r} may touch "
                    f"({STEP_LIMITS[step.kind]} {limit}); nothing was changed")
    return None


def _changed_nothing(steps: list[StepRecord]) -> bool:
    """Every step counts what it affects (rows, items, entries, processes) and each counted none."""
    return bool(steps) and all(STEP_TYPES[s.type].spec.counts_effects and s.rows == 0 for s in steps)


class Engine:
    def __init__(self, systems: Mapping[str, System], connections: Connections, statement_timeout: float,
                 disks: Sequence[Disk] = (), backups: Mapping[str, Backup] | None = None) -> None:
        self.systems = systems
        self.disks = disks
        self.backups: Mapping[str, Backup] = backups or {}
        self.connections = connections
        self.statement_timeout = statement_timeout

    @property
    def inventory(self) -> Inventory:
        """What targets are looked up in; follows a reload, which replaces these attributes."""
        return Inventory(self.systems, self.disks, self.backups)

    async def find_targets(self, kind: str, alert: AlertInfo) -> Targets:
        """The rows the rule the alert's labels select finds now (TargetsRefused when they select
        nothing configured; StepFailed when the rule cannot be read)."""
        try:
            return await TARGET_KINDS[kind].find(alert.labels, self.inventory, self.connections, TARGET_LIMIT)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, RedisError, OSError) as e:
            raise StepFailed(f"{type(e).__name__}: {e}") from None

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
        if playbook.targets is not None and not await self._target(playbook, playbook.targets, alert, report):
            return report
        if report.targets is not None:
            variables[TARGETS] = TargetRows(report.targets.rows)
        report.outcome, report.error = await self._steps(playbook, variables, dry_run, report.steps, run_id)
        if report.outcome == "succeeded" and _changed_nothing(report.steps):
            # Not "succeeded": a run with nothing to do must not count toward max_runs_per_hour,
            # or alerts posted to Alertmanager's open API could open the circuit before a real one.
            report.outcome, report.error = "skipped", "nothing to do: every step found nothing to act on"
            return report
        if report.outcome == "succeeded" and isinstance(playbook.verify, Check):
            await self._verify(playbook.verify, variables, report)
        elif report.outcome == "succeeded" and playbook.verify == TARGETS:
            await self._verify_targets(playbook, alert, report)
        return report

    async def _target(self, playbook: Playbook, kind: str, alert: AlertInfo, report: Report) -> bool:
        """Find the targets into `report`; False (with the outcome set) when the run stops here."""
        try:
            targets = await self.find_targets(kind, alert)
        except TargetsRefused as e:
            report.outcome, report.error = "refused", f"targets: {e}"
            return False
        except StepFailed as e:
            report.error = f"targets: {e}"
            return False
        report.targets = targets
        problem = _targets_problem(playbook, targets)
        if targets.truncated:
            problem = f"more than {len(targets.rows)} targets ({targets.subject}); nothing was changed"
        if problem is not None:
            report.outcome, report.error = "refused", f"targets: {problem}"
            return False
        if not targets.rows:
            report.outcome, report.error = "skipped", f"targets: the rule finds nothing to act on ({targets.subject})"
            return False
        return True

    async def _verify_targets(self, playbook: Playbook, alert: AlertInfo, report: Report) -> None:
        assert playbook.targets is not None and report.targets is not None
        try:
            now = await self.find_targets(playbook.targets, alert)
        except (TargetsRefused, StepFailed) as e:
            report.outcome, report.error = "failed", f"verify: {e}"
            return
        before = set(map(str, report.targets.ids))
        still = [i for i in now.ids if str(i) in before]
        report.verify = float(len(still))
        if still:
            shown = ", ".join(map(str, still[:10])) + (" ..." if len(still) > 10 else "")
            report.outcome = "failed"
            report.error = (f"verify: the rule still finds {len(still)} of the {len(before)} targets "
                            f"({report.targets.subject}): {shown}")

    async def _steps(self, playbook: Playbook, variables: dict[str, Any], dry_run: bool,
                     records: list[StepRecord], run_id: int | None) -> tuple[Outcome, str | None]:
        transactions = Transactions(self.connections, self.statement_timeout)
        ctx = RunContext(playbook=playbook.name, variables=variables, dry_run=dry_run, systems=self.systems,
                         connections=self.connections, transactions=transactions, log=log)
        if TARGETS in variables:
            ctx.outputs[TARGETS] = list(variables[TARGETS])
        settled = False
        try:
            for step in playbook.steps:
                record = StepRecord(name=step.name, type=step.kind, outcome="dry_run" if dry_run else "ok")
                records.append(record)
                await self._step(step, ctx, run_id, record)
                if record.outcome in ("failed", "refused"):
                    outcome: Outcome = "failed" if record.outcome == "failed" else "refused"
                    return outcome, f"step {step.name!r}: {record.error}{kept_effects(records[:-1])}"
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
