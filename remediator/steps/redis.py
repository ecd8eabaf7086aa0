"""`redis` step: a closed set of surgical operations on one system's Redis.

Only the operations below and the queue-library repairs (`queue_repairs`) exist — there is no
way to spell FLUSHDB, FLUSHALL, CONFIG or EVAL in a playbook. Each operation first reads what it
would touch (under WATCH), is refused when that is more than `max_items`, and then applies its
change in one MULTI/EXEC, so the count that was guarded is the count that was changed; a
concurrent writer makes it start over.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import Field, model_validator
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, WatchError

from remediator.steps.base import Need, Refused, RunContext, StepFailed, StepResult, StepSpec, StepType
from remediator.steps.queue_repairs import FailAbandoned, RecoverWorkerGone, RequeueUnacked
from remediator.steps.redis_plan import Call, Operation, Plan, Target, call, wrong_types
from remediator.templating import Template, glob_literal
from taskmedic.config.model import Name
from taskmedic.connections import redis_text

ATTEMPTS = 5
MAX_LIST_SCAN = 100_000


def _field(item: bytes, path: str) -> str | None:
    try:
        value: Any = json.loads(item)
    except ValueError:
        return None
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return None if isinstance(value, dict | list) else redis_text(value)


async def _list_items(pipe: Any, key: str) -> list[bytes]:
    length = await pipe.llen(key)
    if length > MAX_LIST_SCAN:
        raise Refused(f"list {key!r} has {length} items; more than {MAX_LIST_SCAN} are not scanned")
    return list(await pipe.lrange(key, 0, -1))


class ListRemove(Operation):
    key: Template
    value: Template

    async def plan(self, pipe: Pipeline, at: Target) -> Plan:
        key, value = at.ctx.render(self.key), at.ctx.render(self.value)
        await pipe.watch(key)
        count = sum(1 for item in await _list_items(pipe, key) if item == value.encode())
        return Plan(count, [lambda p: p.lrem(key, 0, value)], {"key": key, "value": value})


class ListRemoveWhere(Operation):
    """Remove the JSON items of a list whose `field` (dotted path) equals `equals`."""

    key: Template
    field: str = Field(pattern=r"^[^.]+(\.[^.]+)*$")
    equals: Template

    async def plan(self, pipe: Pipeline, at: Target) -> Plan:
        key, wanted = at.ctx.render(self.key), at.ctx.render(self.equals)
        await pipe.watch(key)
        matches = [item for item in await _list_items(pipe, key) if _field(item, self.field) == wanted]
        writes = [call("lrem", key, 0, item) for item in set(matches)]
        return Plan(len(matches), writes, {"key": key, "field": self.field, "equals": wanted})


class HashDelete(Operation):
    key: Template
    fields: list[Template] = Field(min_length=1)

    async def plan(self, pipe: Pipeline, at: Target) -> Plan:
        key, fields = at.ctx.render(self.key), at.ctx.render_all(self.fields)
        await pipe.watch(key)
        present = [f for f in fields if await pipe.hexists(key, f)]
        writes = [lambda p: p.hdel(key, *present)] if present else []
        return Plan(len(present), writes, {"key": key, "fields": fields})


class SortedSetRemove(Operation):
    key: Template
    members: list[Template] = Field(min_length=1)

    async def plan(self, pipe: Pipeline, at: Target) -> Plan:
        key, members = at.ctx.render(self.key), at.ctx.render_all(self.members)
        await pipe.watch(key)
        present = [m for m in members if await pipe.zscore(key, m) is not None]
        writes = [lambda p: p.zrem(key, *present)] if present else []
        return Plan(len(present), writes, {"key": key, "members": members})


def literal_key(pattern: str) -> str | None:
    """The one key a glob matches when it has no unescaped metacharacter (`*`, `?`, `[`), with
    its escapes undone; None for a real pattern. Backslashes are read as Redis' own matcher reads
    them: one escapes the next character, a trailing one is itself."""
    key: list[str] = []
    chars = iter(pattern)
    for c in chars:
        if c == "\\":
            key.append(next(chars, "\\"))
        elif c in "*?[":
            return None
        else:
            key.append(c)
    return "".join(key)


class DeleteMatching(Operation):
    """Delete the keys matching a glob; templated parts match literally (metacharacters escaped).
    A pattern that names one key (no unescaped metacharacter) is deleted by name, without a SCAN
    of the whole keyspace."""

    pattern: Template

    async def plan(self, pipe: Pipeline, at: Target) -> Plan:
        pattern = at.ctx.render(self.pattern, glob_literal)
        key = literal_key(pattern)
        if key is not None:
            await pipe.watch(key)
            found = bool(await pipe.exists(key))
            return Plan(int(found), [call("delete", key)] if found else [],
                        {"pattern": pattern, "key": key, "keys": [key] if found else []})
        keys: list[bytes] = []
        async for key in at.client.scan_iter(match=pattern, count=500):  # the pipeline would only queue SCAN
            keys.append(key)
            if len(keys) > at.limit:
                break  # already over the guard: no need to list the rest
        if keys:
            await pipe.watch(*keys)
        writes = [lambda p: p.delete(*keys)] if keys else []
        return Plan(len(keys), writes, {"pattern": pattern, "keys": [redis_text(k) for k in keys[:20]]})


class RightPush(Operation):
    """Requeue: append values to a list (`rpush`); `lpush` puts them at the head instead."""

    key: Template
    values: list[Template] = Field(min_length=1)
    at_head: ClassVar[bool] = False

    async def plan(self, pipe: Pipeline, at: Target) -> Plan:
        key, values = at.ctx.render(self.key), at.ctx.render_all(self.values)

        def write(p: Pipeline) -> Any:
            return p.lpush(key, *values) if self.at_head else p.rpush(key, *values)

        return Plan(len(values), [write], {"key": key, "values": values})


class LeftPush(RightPush):
    at_head: ClassVar[bool] = True


class StreamAck(Operation):
    key: Template
    group: str
    ids: list[Template] = Field(min_length=1)

    async def plan(self, pipe: Pipeline, at: Target) -> Plan:
        key, ids = at.ctx.render(self.key), at.ctx.render_all(self.ids)
        await pipe.watch(key)
        return Plan(len(ids), [lambda p: p.xack(key, self.group, *ids)], {"key": key, "group": self.group, "ids": ids})


OPERATIONS = ("lrem", "lrem_where", "hdel", "zrem", "delete", "rpush", "lpush", "xack", "requeue_unacked",
              "fail_abandoned", "recover_worker_gone")


class RedisSpec(StepSpec):
    system: Name
    max_items: int = Field(default=1000, ge=0)  # more would be touched → refused, nothing changed
    lrem: ListRemove | None = None
    lrem_where: ListRemoveWhere | None = None
    hdel: HashDelete | None = None
    zrem: SortedSetRemove | None = None
    delete: DeleteMatching | None = None
    rpush: RightPush | None = None
    lpush: LeftPush | None = None
    xack: StreamAck | None = None
    requeue_unacked: RequeueUnacked | None = None
    fail_abandoned: FailAbandoned | None = None
    recover_worker_gone: RecoverWorkerGone | None = None

    @model_validator(mode="after")
    def _one(self) -> RedisSpec:
        chosen = [op for op in OPERATIONS if getattr(self, op) is not None]
        if len(chosen) != 1:
            raise ValueError(f"set exactly one operation: {', '.join(OPERATIONS)}")
        return self

    @property
    def operation(self) -> str:
        return next(op for op in OPERATIONS if getattr(self, op) is not None)

    @property
    def chosen(self) -> Operation:
        op: Operation = getattr(self, self.operation)
        return op

    def systems(self) -> list[tuple[str, Need]]:
        return [(self.system, "redis")]


class RedisStep(StepType[RedisSpec]):
    key: ClassVar[str] = "redis"
    spec: ClassVar[type[StepSpec]] = RedisSpec

    async def run(self, spec: RedisSpec, ctx: RunContext) -> StepResult:
        client = ctx.redis(spec.system)
        at = Target(ctx, ctx.system(spec.system), client, spec.max_items)
        try:
            async with client.pipeline(transaction=True) as pipe:
                for _ in range(ATTEMPTS):
                    try:
                        return await self._attempt(pipe, spec, at)
                    except WatchError:
                        await pipe.reset()  # type: ignore[no-untyped-call]
        except RedisError as e:
            raise StepFailed(f"redis: {type(e).__name__}: {e}") from None
        raise StepFailed(f"the keys kept changing under {spec.operation}; gave up after {ATTEMPTS} attempts")

    async def _attempt(self, pipe: Pipeline, spec: RedisSpec, at: Target) -> StepResult:
        plan = await spec.chosen.plan(pipe, at)
        detail = {"system": spec.system, "operation": spec.operation, **plan.detail}
        if plan.count > spec.max_items:
            raise Refused(f"{spec.operation} would touch {plan.count} items, more than max_items {spec.max_items}",
                          detail)
        odd = await _odd_types(at, plan)
        if odd:
            raise StepFailed(f"{spec.operation}: {odd[0]}: nothing written (a write would fail inside MULTI/EXEC, "
                             "which does not roll back the others)", {**detail, "wrong_type": odd[:20]})
        if at.ctx.dry_run or not plan.writes:
            await pipe.reset()  # type: ignore[no-untyped-call]  # drops the WATCH
            return StepResult(rows=plan.count, detail=detail)
        pipe.multi()  # type: ignore[no-untyped-call]
        for write in plan.writes:
            write(pipe)
        await pipe.execute()
        return StepResult(rows=plan.count, detail=detail)


async def _odd_types(at: Target, plan: Plan) -> list[str]:
    """The keys the plan's writes would fail on (WRONGTYPE)."""
    return await wrong_types(at.client, {typed for w in plan.writes
                                         if isinstance(w, Call) and (typed := w.typed_key) is not None})
