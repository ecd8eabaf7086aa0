"""`command` step: run a program from an argv list — never a shell — with a timeout.

Only argv elements after the first may be templated (the program itself is the operator's), and
a value that would reach the program as an option (it starts with `-` where the operator's
template does not) is refused unless the step says `allow_option_values: true` or a literal
`--` comes before it. The child gets an empty environment plus the variables named in `env` and the values in `set_env`,
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

from remediator.steps.base import Refused, RunContext, StepFailed, StepResult, StepSpec, StepType
from remediator.templating import Template, is_templated
from taskmedic.config.model import Duration

OUTPUT_KEPT = 4096


class CommandSpec(StepSpec):
    counts_effects: ClassVar[bool] = False
    argv: list[Template] = Field(min_length=1)
    timeout: Duration = Field(default=60.0, gt=0)
    env: list[str] = Field(default_factory=lambda: ["PATH"])  # passed through from our environment
    set_env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    ok_exit_codes: list[int] = Field(default_factory=lambda: [0])
    run_in_dry_run: bool = False  # only for a command that itself changes nothing
    allow_option_values: bool = False  # a rendered value may start with '-' (the program reads it as an option)

    @field_validator("argv")
    @classmethod
    def _program_fixed(cls, argv: list[str]) -> list[str]:
        if is_templated(argv[0]):
            raise ValueError("the program (argv[0]) cannot be templated")
        return argv


def _refuse_options(spec: CommandSpec, argv: list[str], detail: dict[str, Any]) -> None:
    """A label such as `--config=/tmp/evil` or `-rf` must not become an option of the operator's
    program: refuse a rendered value that starts with '-' when the operator's own text does not
    (`--task={{ x }}` is the operator's option), unless a literal `--` ends the options first."""
    if spec.allow_option_values:
        return
    for i, (template, value) in enumerate(zip(spec.argv, argv, strict=True)):
        if i > 0 and template == "--":
            return
        if i > 0 and is_templated(template) and value.startswith("-") and not template.startswith("-"):
            raise Refused(f"argv[{i}] {value!r} (from {template!r}) starts with '-': {argv[0]} would read it as an "
                          "option; put a literal '--' before it, or set allow_option_values: true if that is "
                          "intended", detail)


def _environment(spec: CommandSpec) -> dict[str, str]:
    return {**{k: os.environ[k] for k in spec.env if k in os.environ}, **spec.set_env}


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class CommandStep(StepType[CommandSpec]):
    key: ClassVar[str] = "command"
    spec: ClassVar[type[StepSpec]] = CommandSpec

    async def run(self, spec: CommandSpec, ctx: RunContext) -> StepResult:
        argv = ctx.render_all(spec.argv)
        detail: dict[str, Any] = {"argv": argv}
        _refuse_options(spec, argv, detail)
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
