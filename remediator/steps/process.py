"""`process` step: signal one process, only if its name or command line matches `match`; or,
with `action: find_gone`, only look: of the rows an earlier step output (`rows_from`), keep those
whose PID no live process matching `match` has any more (S5: a task row whose engine died, or
whose PID was reused).

The PID comes from the alert or a row (S5: the engine PID a task row names), so the regex is what
stands between a wrong value and killing an unrelated process; PID 1 and the remediator itself
are never signalled. A process that is already gone is nothing to do, not an error.

`find_gone` can only judge processes it can see. A remediator in another PID namespace (its own
container, another host) sees none of the engines, and every row would look gone; so when no
live process matching `match` is visible at all, the step is refused and nothing is changed.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import psutil
from pydantic import Field, model_validator

from remediator.steps.base import Refused, RunContext, StepFailed, StepResult, StepType
from remediator.templating import Template
from taskmedic.config.model import Duration, Model, Regex

SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL, "INT": signal.SIGINT, "HUP": signal.SIGHUP,
           "QUIT": signal.SIGQUIT, "USR1": signal.SIGUSR1, "USR2": signal.SIGUSR2}


class ProcessSpec(Model):
    pid: Template  # with find_gone, rendered once per row, that row being `item`
    match: Regex  # searched in the process name and in its command line joined by spaces
    action: Literal["signal", "find_gone"] = "signal"
    rows_from: str | None = None  # find_gone: the earlier step whose output rows are checked
    signal: Literal["TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2"] = "TERM"
    wait: Duration = Field(default=10.0, le=300)  # how long to wait for it to exit

    @model_validator(mode="after")
    def _rows(self) -> ProcessSpec:
        if (self.action == "find_gone") != (self.rows_from is not None):
            raise ValueError("action: find_gone needs `rows_from` (the earlier step whose rows it checks), "
                             "and only find_gone takes it")
        return self


def _parse_pid(text: str) -> int:
    # ASCII digits only: str.isdigit() also accepts '²' or '٣', which int() then rejects or reads.
    if re.fullmatch(r"\s*[0-9]{1,10}\s*", text) is None or int(text) == 0:
        raise StepFailed(f"pid {text!r} is not a process id")
    return int(text)


def _pid(text: str) -> int:
    pid = _parse_pid(text)
    if pid == 1 or pid == os.getpid():
        raise Refused(f"pid {pid} is never signalled")
    return pid


def _describe(proc: psutil.Process) -> tuple[str, str]:
    return proc.name(), " ".join(proc.cmdline())


def _matches(pattern: str, name: str | None, cmdline: list[str] | None) -> bool:
    return bool((name and re.search(pattern, name)) or (cmdline and re.search(pattern, " ".join(cmdline))))


@dataclass(frozen=True)
class Seen:
    """One process as `find_gone` saw it: is it the program `match` names?"""

    matches: bool
    judged: bool  # False: its command line could not be read (another user's), so no verdict


def _processes(pattern: str) -> dict[int, Seen]:
    """Every live process this replica can see (zombies are not live), and whether it matches."""
    seen: dict[int, Seen] = {}
    for proc in psutil.process_iter(["name", "cmdline", "status"], ad_value=None):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        matches = _matches(pattern, info["name"], info["cmdline"])
        seen[proc.pid] = Seen(matches, judged=matches or info["cmdline"] is not None)
    return seen


class ProcessStep(StepType[ProcessSpec]):
    key: ClassVar[str] = "process"
    spec: ClassVar[type[Model]] = ProcessSpec

    async def run(self, spec: ProcessSpec, ctx: RunContext) -> StepResult:
        if spec.action == "find_gone":
            return await self._find_gone(spec, ctx)
        pid = _pid(ctx.render(spec.pid))
        detail: dict[str, object] = {"pid": pid, "signal": spec.signal}
        try:
            proc = psutil.Process(pid)
            name, cmdline = _describe(proc)
        except psutil.NoSuchProcess:
            return StepResult(rows=0, detail={**detail, "gone": True})
        except psutil.AccessDenied as e:
            raise StepFailed(f"pid {pid}: access denied ({e})") from None
        detail.update(name=name, cmdline=cmdline[:200])
        if not (re.search(spec.match, name) or re.search(spec.match, cmdline)):
            raise Refused(f"pid {pid} ({name}) does not match {spec.match!r}; not signalled", detail)
        if ctx.dry_run:
            return StepResult(rows=1, detail=detail)
        return StepResult(rows=1, detail={**detail, "exited": await self._signal(proc, spec)})

    @staticmethod
    async def _find_gone(spec: ProcessSpec, ctx: RunContext) -> StepResult:
        """The rows of `rows_from` whose PID no live process matching `match` has; refused when
        no such process is visible at all (this replica cannot see the program's processes)."""
        assert spec.rows_from is not None
        rows = ctx.outputs.get(spec.rows_from, [])
        pids = [_parse_pid(replace(ctx, variables={**ctx.variables, "item": row}).render(spec.pid)) for row in rows]
        detail: dict[str, Any] = {"rows_from": spec.rows_from, "checked": len(rows), "match": spec.match}
        if not rows:
            return StepResult(rows=0, detail=detail, rows_returned=[])
        seen = await asyncio.to_thread(_processes, spec.match)
        seen.pop(os.getpid(), None)  # the remediator itself is never evidence
        visible = sum(1 for p in seen.values() if p.matches)
        detail["visible"] = visible
        if visible == 0:
            raise Refused(f"cannot see any process matching {spec.match!r}, so every row would look gone; run the "
                          "remediator where it shares the scanner's process namespace (or correct `match`)", detail)
        gone = [(row, pid) for row, pid in zip(rows, pids, strict=True)
                if pid not in seen or (seen[pid].judged and not seen[pid].matches)]
        detail["gone"] = [pid for _row, pid in gone[:50]]
        return StepResult(rows=len(gone), detail=detail, rows_returned=[row for row, _pid in gone])

    async def _signal(self, proc: psutil.Process, spec: ProcessSpec) -> bool:
        try:
            proc.send_signal(SIGNALS[spec.signal])
        except psutil.NoSuchProcess:
            return True
        except psutil.AccessDenied as e:
            raise StepFailed(f"pid {proc.pid}: access denied ({e})") from None
        try:
            await asyncio.to_thread(proc.wait, spec.wait)
        except psutil.TimeoutExpired:
            raise StepFailed(f"pid {proc.pid} still runs {spec.wait:g}s after SIG{spec.signal}") from None
        return True
