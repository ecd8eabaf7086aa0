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
from taskmedic.connections import redis_text

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


# The type a write's key must have (or be missing: the write creates it). Redis' MULTI/EXEC does
# not roll back: a write failing with WRONGTYPE inside it leaves the others applied.
KEY_TYPES = {"rpush": "list", "lpush": "list", "lrem": "list", "sadd": "set", "srem": "set", "hset": "hash",
             "hdel": "hash", "hincrby": "hash", "zadd": "zset", "zrem": "zset", "xadd": "stream", "incr": "string"}


async def wrong_types(client: aioredis.Redis, needed: set[tuple[Any, str]]) -> list[str]:
    """Of the (key, type) pairs writes need, the keys of another type (they would fail with
    WRONGTYPE), read in one round trip. Not WATCHed: most are shared by a whole queue (its list,
    its events stream) and change all the time; a key whose type changes in the few milliseconds
    before EXEC is left to chance."""
    keys = sorted({key for key, _ in needed}, key=str)
    if not keys:
        return []
    async with client.pipeline(transaction=False) as reads:
        for key in keys:
            reads.type(key)
        types = dict(zip(keys, map(redis_text, await reads.execute()), strict=True))
    return sorted(f"{redis_text(key)!r} is a {types[key]}, not a {kind}" for key, kind in needed
                  if types[key] not in ("none", kind))


@dataclass(frozen=True)
class Call:
    """A write to queue inside MULTI: `command` on the pipeline with these arguments (the key first)."""

    command: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __call__(self, pipe: Pipeline) -> Any:
        return getattr(pipe, self.command)(*self.args, **self.kwargs)

    @property
    def typed_key(self) -> tuple[Any, str] | None:
        """The key and the type this write needs it to have, when it needs one."""
        kind = KEY_TYPES.get(self.command)
        return (self.args[0], kind) if kind is not None and self.args else None


def call(command: str, *args: Any, **kwargs: Any) -> Write:
    return Call(command, args, kwargs)

