"""What a `redis` step operation is: it reads what it would touch (under WATCH) and returns a
`Plan`, the count to guard and the writes that the step then applies in one MULTI/EXEC."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from remediator.steps.base import RunContext
from taskmedic.config.model import Model, System

Write = Callable[[Pipeline], Any]


@dataclass
class Plan:
    """What an operation found: how many items it would touch and the writes that do it."""

    count: int
    writes: list[Write] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """Where an operation plans: the run, the system and its client (for reads that cannot be
    queued on the WATCHing pipeline, such as SCAN), and the `max_items` guard."""

    ctx: RunContext
    system: System
    client: aioredis.Redis
    limit: int


class Operation(Model):
    async def plan(self, pipe: Pipeline, at: Target) -> Plan:
        raise NotImplementedError


def call(command: str, *args: Any, **kwargs: Any) -> Write:
    """A write to queue inside MULTI: `command` on the pipeline with these arguments."""
    return lambda p: getattr(p, command)(*args, **kwargs)

