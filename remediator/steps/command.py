"""`command` step: run a program from an argv list — never a shell — with a timeout.

Only argv elements after the first may be templated (the program itself is the operator's); the
child gets an empty environment plus the variables named in `env` and the values in `set_env`,
runs in its own session so a timeout kills everything it started, and its output is kept (cut
short) in the step's result.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any, ClassVar

from pydantic import Field, field_validator

from exporter.config.model import Duration, Model
from remediator.steps.base import RunContext, StepFailed, StepResult, StepType
from remediator.templating import Template, is_templated

OUTPUT_KEPT = 4096


class CommandSpec(Model):
    argv: list[Template] = Field(min_length=1)
    timeout: Duration = Field(default=60.0, gt=0)
    env: list[str] = Field(default_factory=lambda: ["PATH"])  # passed through from our environment
    set_env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    ok_exit_codes: list[int] = Field(default_factory=lambda: [0])
    run_in_dry_run: bool = False  # only for a command that itself changes nothing

    @field_validator("argv")
    @classmethod
    def _program_fixed(cls, argv: list[str]) -> list[str]:
        if is_templated(argv[0]):
            raise ValueError("the program (argv[0]) cannot be templated")
        return argv


def _environment(spec: CommandSpec) -> dict[str, str]:
    return {**{k: os.environ[k] for k in spec.env if k in os.environ}, **spec.set_env}


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class CommandStep(StepType[CommandSpec]):
    key: ClassVar[str] = "command"
    spec: ClassVar[type[Model]] = CommandSpec

    async def run(self, spec: CommandSpec, ctx: RunContext) -> StepResult:
        argv = ctx.render_all(spec.argv)
        detail: dict[str, Any] = {"argv": argv}
        if ctx.dry_run and not spec.run_in_dry_run:
            return StepResult(rows=0, detail={**detail, "ran": False})
        code, output = await self._execute(argv, spec)
        detail.update(exit_code=code, output=output)
        if code not in spec.ok_exit_codes:
            raise StepFailed(f"{argv[0]} exited with {code}: {output[-300:]}", detail)
        return StepResult(rows=1, detail=detail)

    async def _execute(self, argv: list[str], spec: CommandSpec) -> tuple[int, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=_environment(spec), cwd=spec.cwd, start_new_session=True)
        except OSError as e:
            raise StepFailed(f"cannot run {argv[0]}: {e.strerror}") from None
        try:
            async with asyncio.timeout(spec.timeout):
                out, _ = await proc.communicate()
        except TimeoutError:
            _kill_group(proc)
            await proc.wait()
            raise StepFailed(f"{argv[0]} did not finish within {spec.timeout:g}s; killed") from None
        except asyncio.CancelledError:
            _kill_group(proc)
            raise
        return proc.returncode or 0, out.decode("utf-8", "replace")[-OUTPUT_KEPT:]
