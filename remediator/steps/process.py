"""`process` step: signal one process, only if its name or command line matches `match`; or,
with `action: find_gone`, only look: keep the PID as an output row when no process matching
`match` has it any more (S5: a zombie task row whose engine died, or whose PID was reused).

The PID comes from the alert (S5: the engine PID a zombie task row names), so the regex is what
stands between a wrong label and killing an unrelated process; PID 1 and the remediator itself
are refused outright. A process that is already gone is nothing to do, not an error.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from typing import ClassVar, Literal

import psutil
from pydantic import Field

from exporter.config.model import Duration, Model, Regex
from remediator.steps.base import Refused, RunContext, StepFailed, StepResult, StepType
from remediator.templating import Template

SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL, "INT": signal.SIGINT, "HUP": signal.SIGHUP,
           "QUIT": signal.SIGQUIT, "USR1": signal.SIGUSR1, "USR2": signal.SIGUSR2}


class ProcessSpec(Model):
    pid: Template
    match: Regex  # searched in the process name and in its command line joined by spaces
    action: Literal["signal", "find_gone"] = "signal"
    signal: Literal["TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2"] = "TERM"
    wait: Duration = Field(default=10.0, le=300)  # how long to wait for it to exit


def _pid(text: str) -> int:
    # ASCII digits only: str.isdigit() also accepts '²' or '٣', which int() then rejects or reads.
    if re.fullmatch(r"\s*[0-9]{1,10}\s*", text) is None:
        raise StepFailed(f"pid {text!r} is not a process id")
    pid = int(text)
    if pid <= 1 or pid == os.getpid():
        raise Refused(f"pid {pid} is never signalled")
    return pid


def _describe(proc: psutil.Process) -> tuple[str, str]:
    return proc.name(), " ".join(proc.cmdline())


class ProcessStep(StepType[ProcessSpec]):
    key: ClassVar[str] = "process"
    spec: ClassVar[type[Model]] = ProcessSpec

    async def run(self, spec: ProcessSpec, ctx: RunContext) -> StepResult:
        pid = _pid(ctx.render(spec.pid))
        if spec.action == "find_gone":
            return self._find_gone(pid, spec, ctx)
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
    def _find_gone(pid: int, spec: ProcessSpec, ctx: RunContext) -> StepResult:
        try:
            proc = psutil.Process(pid)
            name, cmdline = _describe(proc)
            gone = proc.status() == psutil.STATUS_ZOMBIE or not (
                re.search(spec.match, name) or re.search(spec.match, cmdline))
        except psutil.NoSuchProcess:
            gone = True
        except psutil.AccessDenied:
            gone = False  # it exists; we may not look at it
        row = ctx.variables.get("item") or {"pid": pid}
        return StepResult(rows=int(gone), detail={"pid": pid, "gone": gone}, rows_returned=[row] if gone else [])

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
