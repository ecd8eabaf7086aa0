"""`process` step: signal a task's engine process, or (`action: find_gone`) find the tasks whose
engine is gone — only ever judging PIDs the task system itself recorded.

The PID and the task's start come from rows an earlier step output (`for_each` / `rows_from`,
the row being `item`), never from an alert: a `pid` or `started_at` template that reads
`labels`, `annotations` or `alert` is refused when the playbook loads. Whether a PID is still
the task's engine is `taskmedic.processes.judge_engine`'s answer, the exporter's too: its
executable equals `engine` exactly (a bare name: the executable's basename), its owner is
`owner` when set, and it was created before the task started (else the PID was reused). A
look-alike is refused with the reason and never signalled; a process that cannot be inspected
is not judged; PID 1 and the remediator itself are never signalled; a process already gone is
nothing to do.

`find_gone` outputs the rows whose engine is gone or whose PID now belongs to something else.
It can only judge processes it can see: a remediator in another PID namespace (its own
container, another host) sees none of the engines, and every row would look gone; so when no
live engine is visible at all, the step is refused and nothing is changed.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, ClassVar, Literal

import psutil
from pydantic import Field, field_validator, model_validator

from remediator.steps.base import Refused, RunContext, StepFailed, StepResult, StepSpec, StepType
from remediator.templating import ALERT_VARIABLES, Template, references
from taskmedic.config.model import Duration
from taskmedic.processes import Verdict, judge, judge_engine, visible_engines

SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL, "INT": signal.SIGINT, "HUP": signal.SIGHUP,
           "QUIT": signal.SIGQUIT, "USR1": signal.SIGUSR1, "USR2": signal.SIGUSR2}


class ProcessSpec(StepSpec):
    pid: Template  # the row's PID column, e.g. "{{ item.engine_pid }}"
    started_at: Template  # the row's task start (timestamptz or Unix time), e.g. "{{ item.started_at }}"
    engine: str = Field(min_length=1)  # the engine's executable: an absolute path, or a bare name
    owner: str | None = None  # user name or uid the engine runs as
    action: Literal["signal", "find_gone"] = "signal"
    rows_from: str | None = None  # find_gone: the earlier step whose output rows are checked
    signal: Literal["TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2"] = "TERM"
    wait: Duration = Field(default=10.0, le=300)  # how long to wait for it to exit

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "match" in data:
            raise ValueError("`match` (a pattern over the command line) is gone: set `engine` to the engine's "
                             "executable, `started_at` to the task's start, and `owner` if it has one")
        return data

    @field_validator("pid", "started_at")
    @classmethod
    def _recorded_by_the_system(cls, text: str) -> str:
        used = references(text) & ALERT_VARIABLES
        if used:
            raise ValueError(f"comes from the alert ({', '.join(sorted(used))}); a PID and its task's start must "
                             "come from rows the system recorded (for_each / rows_from, `item`)")
        return text

    @field_validator("engine")
    @classmethod
    def _no_pattern(cls, engine: str) -> str:
        if engine != engine.strip() or "\x00" in engine or engine.endswith("/"):
            raise ValueError("the engine's executable: an absolute path or a bare file name")
        if "/" in engine and not os.path.isabs(engine):
            raise ValueError("a path to the engine must be absolute (or give its bare name)")
        return engine

    @model_validator(mode="after")
    def _rows(self) -> ProcessSpec:
        if (self.action == "find_gone") != (self.rows_from is not None):
            raise ValueError("action: find_gone needs `rows_from` (the earlier step whose rows it checks), "
                             "and only find_gone takes it")
        return self

    def reads_rows_of(self) -> dict[str, str]:
        return {} if self.rows_from is None else {"rows_from": self.rows_from}

    def sources_problem(self, for_each: str | None, earlier: Mapping[str, StepSpec]) -> str | None:
        if self.rows_from is not None and for_each is not None:
            return "find_gone goes through the rows of `rows_from` itself (it must see them all at once); drop for_each"
        return None


def _parse_pid(text: str) -> int:
    # ASCII digits only: str.isdigit() also accepts '²' or '٣', which int() then rejects or reads.
    if re.fullmatch(r"\s*[0-9]{1,10}\s*", text) is None or int(text) == 0:
        raise StepFailed(f"pid {text!r} is not a process id")
    return int(text)


def _parse_start(text: str) -> datetime | float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        started = datetime.fromisoformat(text.strip())
    except ValueError:
        raise StepFailed(f"started_at {text!r} is neither a timestamp nor a Unix time") from None
    if started.tzinfo is None:
        raise StepFailed(f"started_at {text!r} has no time zone: select it as timestamptz "
                         "(or extract(epoch from ...)) so it compares with the process start time")
    return started


def _task(spec: ProcessSpec, ctx: RunContext, row: dict[str, Any] | None = None) -> tuple[int, datetime | float]:
    if row is not None:
        ctx = replace(ctx, variables={**ctx.variables, "item": row})
    return _parse_pid(ctx.render(spec.pid)), _parse_start(ctx.render(spec.started_at))


class ProcessStep(StepType[ProcessSpec]):
    key: ClassVar[str] = "process"
    spec: ClassVar[type[StepSpec]] = ProcessSpec

    async def run(self, spec: ProcessSpec, ctx: RunContext) -> StepResult:
        if spec.action == "find_gone":
            return await self._find_gone(spec, ctx)
        pid, started = _task(spec, ctx)
        if pid == 1 or pid == os.getpid():
            raise Refused(f"pid {pid} is never signalled")
        detail: dict[str, Any] = {"pid": pid, "signal": spec.signal, "engine": spec.engine}
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return StepResult(rows=0, detail={**detail, "gone": True})
        except psutil.AccessDenied as e:
            raise Refused(f"pid {pid}: cannot tell whether it is the engine: access denied ({e})", detail) from None
        verdict = await asyncio.to_thread(judge, proc, spec.engine, spec.owner, started)
        detail["verdict"] = verdict.reason
        if verdict.kind == "gone":
            return StepResult(rows=0, detail={**detail, "gone": True})
        if verdict.kind == "unknown":
            raise Refused(f"pid {pid}: cannot tell whether it is the engine: {verdict.reason}; not signalled", detail)
        if not verdict.is_engine:
            raise Refused(f"pid {pid} is not the engine: {verdict.reason}; not signalled", detail)
        if ctx.dry_run:
            return StepResult(rows=1, detail=detail)
        return StepResult(rows=1, detail={**detail, "exited": await self._signal(proc, spec)})

    @staticmethod
    async def _find_gone(spec: ProcessSpec, ctx: RunContext) -> StepResult:
        """The rows of `rows_from` whose engine is gone (or whose PID is now something else);
        refused when no live engine is visible at all (this replica cannot see the engines)."""
        assert spec.rows_from is not None
        rows = ctx.outputs.get(spec.rows_from, [])
        tasks = [_task(spec, ctx, row) for row in rows]
        detail: dict[str, Any] = {"rows_from": spec.rows_from, "checked": len(rows), "engine": spec.engine}
        if not rows:
            return StepResult(rows=0, detail=detail, rows_returned=[])
        visible = await asyncio.to_thread(visible_engines, spec.engine, spec.owner)
        detail["visible"] = visible
        if visible == 0:
            raise Refused(f"cannot see any live {spec.engine!r} process, so every row would look gone; run the "
                          "remediator where it shares the engines' process namespace (or correct `engine`)", detail)
        verdicts = await asyncio.to_thread(
            lambda: [judge_engine(pid, spec.engine, spec.owner, started) for pid, started in tasks])
        gone = [(row, pid, v) for row, (pid, _), v in zip(rows, tasks, verdicts, strict=True)
                if v.kind in ("gone", "not_engine")]
        detail["gone"] = [{"pid": pid, "why": v.reason} for _row, pid, v in gone[:50]]
        detail["not_judged"] = _not_judged(tasks, verdicts)
        return StepResult(rows=len(gone), detail=detail, rows_returned=[row for row, _pid, _v in gone])

    async def _signal(self, proc: psutil.Process, spec: ProcessSpec) -> bool:
        try:
            proc.send_signal(SIGNALS[spec.signal])  # psutil refuses if the PID was reused since `judge`
        except psutil.NoSuchProcess:
            return True
        except psutil.AccessDenied as e:
            raise StepFailed(f"pid {proc.pid}: access denied ({e})") from None
        try:
            await asyncio.to_thread(proc.wait, spec.wait)
        except psutil.TimeoutExpired:
            raise StepFailed(f"pid {proc.pid} still runs {spec.wait:g}s after SIG{spec.signal}") from None
        return True


def _not_judged(tasks: list[tuple[int, datetime | float]], verdicts: list[Verdict]) -> list[dict[str, Any]]:
    """PIDs that could not be inspected: their rows are kept, never marked gone."""
    return [{"pid": pid, "why": v.reason} for (pid, _), v in zip(tasks, verdicts, strict=True)
            if v.kind == "unknown"][:50]
