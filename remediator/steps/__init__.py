"""Step types, keyed by their YAML key. Adding one is a new module here and one line below."""

from __future__ import annotations

from typing import Any

from remediator.steps.base import Refused, RunContext, StepFailed, StepResult, StepType, Transactions
from remediator.steps.command import CommandSpec, CommandStep
from remediator.steps.engine import EngineSpec, EngineStep
from remediator.steps.files import FilesSpec, FilesStep
from remediator.steps.harbor import HarborSpec, HarborStep
from remediator.steps.http import HttpSpec, HttpStep
from remediator.steps.process import ProcessSpec, ProcessStep
from remediator.steps.redis import RedisSpec, RedisStep
from remediator.steps.sql import SqlSpec, SqlStep

STEP_TYPES: dict[str, StepType[Any]] = {
    step.key: step for step in (SqlStep(), RedisStep(), HttpStep(), FilesStep(), ProcessStep(), CommandStep(),
                                HarborStep(), EngineStep())
}

__all__ = [
    "STEP_TYPES",
    "CommandSpec",
    "EngineSpec",
    "FilesSpec",
    "HarborSpec",
    "HttpSpec",
    "ProcessSpec",
    "RedisSpec",
    "Refused",
    "RunContext",
    "SqlSpec",
    "StepFailed",
    "StepResult",
    "StepType",
    "Transactions",
]
