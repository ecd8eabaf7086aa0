"""`redis` step: a closed set of surgical operations on one system's Redis.

Only the operations below exist — there is no way to spell FLUSHDB, FLUSHALL, CONFIG or EVAL in
a playbook. Each operation first reads what it would touch (under WATCH), is refused when that
is more than `max_items`, and then applies its change in one MULTI/EXEC, so the count that was
guarded is the count that was changed; a concurrent writer makes it start over.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field, model_validator
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, WatchError

from remediator.steps.base import Refused, RunContext, StepFailed, StepResult, StepType
from remediator.templating import Template, glob_literal
from taskmedic.config.model import Duration, Model, Name
from taskmedic.connections import redis_now

ATTEMPTS = 5
MAX_LIST_SCAN = 100_000


@dataclass
class Plan:
    """What an operation found: how many items it would touch and the writes that do it."""

    count: int
    writes: list[Callable[[Pipeline], Any]] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _field(item: bytes, path: str) -> str | None:
    try:
        value: Any = json.loads(item)
    except ValueError:
        return None
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return None if isinstance(value, dict | list) else _text(value)


async def _list_items(pipe: Any, key: str) -> list[bytes]:
    length = await pipe.llen(key)
    if length > MAX_LIST_SCAN:
        raise Refused(f"list {key!r} has {length} items; more than {MAX_LIST_SCAN} are not scanned")
    return list(await pipe.lrange(key, 0, -1))


def _call(command: str, *args: Any, **kwargs: Any) -> Callable[[Pipeline], Any]:
    """A write to queue inside MULTI: `command` on the pipeline with these arguments."""
    return lambda p: getattr(p, command)(*args, **kwargs)


def _remove_item(key: str, item: Any) -> Callable[[Pipeline], Any]:
    return lambda p: p.lrem(key, 0, item)


class Operation(Model):
    async def plan(self, pipe: Pipeline, ctx: RunContext, limit: int, client: Any) -> Plan:
        raise NotImplementedError


class ListRemove(Operation):
    key: Template
    value: Template

    async def plan(self, pipe: Pipeline, ctx: RunContext, limit: int, client: Any) -> Plan:
        key, value = ctx.render(self.key), ctx.render(self.value)
        await pipe.watch(key)
        count = sum(1 for item in await _list_items(pipe, key) if item == value.encode())
        return Plan(count, [lambda p: p.lrem(key, 0, value)], {"key": key, "value": value})


class ListRemoveWhere(Operation):
    """Remove the JSON items of a list whose `field` (dotted path) equals `equals`."""

    key: Template
    field: str = Field(pattern=r"^[^.]+(\.[^.]+)*$")
    equals: Template

    async def plan(self, pipe: Pipeline, ctx: RunContext, limit: int, client: Any) -> Plan:
        key, wanted = ctx.render(self.key), ctx.render(self.equals)
        await pipe.watch(key)
        matches = [item for item in await _list_items(pipe, key) if _field(item, self.field) == wanted]
        writes = [_remove_item(key, item) for item in set(matches)]
        return Plan(len(matches), writes, {"key": key, "field": self.field, "equals": wanted})


class HashDelete(Operation):
    key: Template
    fields: list[Template] = Field(min_length=1)

    async def plan(self, pipe: Pipeline, ctx: RunContext, limit: int, client: Any) -> Plan:
        key, fields = ctx.render(self.key), ctx.render_all(self.fields)
        await pipe.watch(key)
        present = [f for f in fields if await pipe.hexists(key, f)]
        writes = [lambda p: p.hdel(key, *present)] if present else []
        return Plan(len(present), writes, {"key": key, "fields": fields})


class SortedSetRemove(Operation):
    key: Template
    members: list[Template] = Field(min_length=1)

    async def plan(self, pipe: Pipeline, ctx: RunContext, limit: int, client: Any) -> Plan:
        key, members = ctx.render(self.key), ctx.render_all(self.members)
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

    async def plan(self, pipe: Pipeline, ctx: RunContext, limit: int, client: Any) -> Plan:
        pattern = ctx.render(self.pattern, glob_literal)
        key = literal_key(pattern)
        if key is not None:
            await pipe.watch(key)
            found = bool(await pipe.exists(key))
            return Plan(int(found), [_call("delete", key)] if found else [],
                        {"pattern": pattern, "key": key, "keys": [key] if found else []})
        keys: list[bytes] = []
        async for key in client.scan_iter(match=pattern, count=500):  # the pipeline would only queue SCAN
            keys.append(key)
            if len(keys) > limit:
                break  # already over the guard: no need to list the rest
        if keys:
            await pipe.watch(*keys)
        writes = [lambda p: p.delete(*keys)] if keys else []
        return Plan(len(keys), writes, {"pattern": pattern, "keys": [_text(k) for k in keys[:20]]})


class RightPush(Operation):
    """Requeue: append values to a list (`rpush`); `lpush` puts them at the head instead."""

    key: Template
    values: list[Template] = Field(min_length=1)
    at_head: ClassVar[bool] = False

    async def plan(self, pipe: Pipeline, ctx: RunContext, limit: int, client: Any) -> Plan:
        key, values = ctx.render(self.key), ctx.render_all(self.values)

        def write(p: Pipeline) -> Any:
            return p.lpush(key, *values) if self.at_head else p.rpush(key, *values)

        return Plan(len(values), [write], {"key": key, "values": values})


class LeftPush(RightPush):
    at_head: ClassVar[bool] = True


class StreamAck(Operation):
    key: Template
    group: str
    ids: list[Template] = Field(min_length=1)

    async def plan(self, pipe: Pipeline, ctx: RunContext, limit: int, client: Any) -> Plan:
        key, ids = ctx.render(self.key), ctx.render_all(self.ids)
        await pipe.watch(key)
        return Plan(len(ids), [lambda p: p.xack(key, self.group, *ids)], {"key": key, "group": self.group, "ids": ids})


KOMBU_SEP = "\x06\x16"  # kombu's Redis transport: binding member fields, and queue + SEP + priority
Binding = tuple[str, str, str]  # (routing key, pattern, queue), as kombu's get_table returns them


def _kombu_priority(message: Any, steps: list[int]) -> int:
    """The priority step of a message, as kombu's `_get_message_priority` (clamped to 0..9, 0
    when unreadable) and `priority` (the step at or below it) compute it."""
    try:
        wanted = max(min(int(message["properties"]["priority"]), 9), 0)
    except (TypeError, ValueError, KeyError):
        wanted = 0
    return steps[bisect.bisect(steps, wanted) - 1]


def _kombu_queue(queue: str, priority: int) -> str:
    """kombu's `_q_for_pri`: priority 0 is the queue itself, others a sub-queue."""
    return f"{queue}{KOMBU_SEP}{priority}" if priority else queue


class RequeueUnacked(Operation):
    """Celery (kombu's Redis transport): give back the messages a dead worker took more than
    `older_than` ago, the way kombu's own restore pass (`restore_visible` → `restore_by_tag` →
    `_do_restore_message`) does: the message, marked redelivered, is pushed on the consuming end
    of every queue its exchange's bindings route its routing key to (as for a direct exchange,
    kombu's default), into the priority sub-queue for its priority, and its `unacked` and
    `unacked_index` entries go. Newest first, as kombu does, so the oldest is consumed first."""

    older_than: Duration = Field(default=3600.0, gt=0)
    priority_steps: list[int] = Field(default_factory=lambda: [0, 3, 6, 9], min_length=1)  # kombu's default

    @model_validator(mode="after")
    def _steps(self) -> RequeueUnacked:
        if self.priority_steps != sorted(set(self.priority_steps)) or not 0 <= self.priority_steps[0] <= 9 \
                or self.priority_steps[-1] > 9:
            raise ValueError("priority_steps: distinct priorities 0..9 in ascending order (kombu's default: "
                             "[0, 3, 6, 9])")
        return self

    async def plan(self, pipe: Pipeline, ctx: RunContext, limit: int, client: Any) -> Plan:
        await pipe.watch("unacked", "unacked_index")
        cutoff = redis_now(await pipe.time()) - self.older_than
        tags: list[Any] = await pipe.zrangebyscore("unacked_index", "-inf", cutoff, start=0, num=limit + 1)
        tags.reverse()  # kombu restores the newest first
        payloads = await pipe.hmget("unacked", tags) if tags else []
        tables: dict[str, list[Binding]] = {}  # each exchange's bindings, read once
        writes: list[Callable[[Pipeline], Any]] = []
        queues: dict[str, int] = {}
        unroutable: list[str] = []
        for tag, payload in zip(tags, payloads, strict=True):
            entry = _unacked_entry(payload)
            if entry is not None:
                message, exchange, routing_key = entry
                targets = await self._lookup(pipe, tables, exchange, routing_key)
                if not targets:
                    unroutable.append(_text(tag))  # left where it is: kombu would drop it
                    continue
                body = json.dumps(_redelivered(message))
                for queue in targets:
                    key = _kombu_queue(queue, _kombu_priority(message, self.priority_steps))
                    writes.append(_call("rpush", key, body))
                    queues[key] = queues.get(key, 0) + 1
            # kombu drops the index entries of an unreadable message too
            writes += [_call("zrem", "unacked_index", tag), _call("hdel", "unacked", tag)]
        detail: dict[str, Any] = {"older_than": self.older_than, "queues": queues}
        if unroutable:
            detail["unroutable"] = unroutable[:50]
        return Plan(len(tags) - len(unroutable), writes, detail)

    @staticmethod
    async def _lookup(pipe: Pipeline, tables: dict[str, list[Binding]], exchange: str,
                      routing_key: str) -> list[str]:
        """kombu's `_lookup` for a direct exchange: every queue bound with this routing key; the
        anonymous exchange routes to the queue named by the routing key."""
        if not exchange:
            return [routing_key] if routing_key else []
        if exchange not in tables:
            key = f"_kombu.binding.{exchange}"
            await pipe.watch(key)
            members = await pipe.smembers(key)
            tables[exchange] = [b for b in (tuple(_text(m).split(KOMBU_SEP)) for m in members) if len(b) == 3]
        return sorted({queue for rkey, _pattern, queue in tables[exchange] if rkey == routing_key})


def _unacked_entry(payload: bytes | str | None) -> tuple[dict[str, Any], str, str] | None:
    """An `unacked` hash value `[message, exchange, routing_key]`, or None when unreadable."""
    try:
        message, exchange, routing_key = json.loads(payload or b"")
    except (ValueError, TypeError):
        return None
    if not isinstance(message, dict):
        return None
    return message, str(exchange or ""), str(routing_key or "")


def _redelivered(message: dict[str, Any]) -> dict[str, Any]:
    with contextlib.suppress(KeyError, TypeError):
        message["headers"]["redelivered"] = True
        message["properties"]["delivery_info"]["redelivered"] = True
    return message


class FailAbandoned(Operation):
    """RQ: what RQ's own `StartedJobRegistry.cleanup` does with entries of the started registry
    (`rq:wip:<queue>`) whose lease score has passed, so the jobs can be inspected or requeued.

    An entry is `<job id>` (RQ 1.x, where a custom id may contain ':') or `<job id>:<execution
    id>` (RQ 2+): it names the job whose hash `rq:job:<entry>` exists, else the one before its
    last ':'. A job still `started` moves to `rq:failed:<queue>` for its own `failure_ttl` (else
    the step's), its hash says `failed` and expires with it, as RQ's failure path does. An entry
    whose job has another status (it finished, its worker died before removing the entry) or
    whose hash is gone (expired) only leaves the started registry: a job hash is never created.
    Unlike RQ, a job with retries left is failed too (`rq requeue` it), and no failure callback
    or dependent runs: those live in the application's code."""

    queues: list[Template] = Field(default_factory=list)  # default: every queue in rq:queues
    failure_ttl: Duration = Field(default=365 * 86400.0, gt=0)  # RQ's default

    async def plan(self, pipe: Pipeline, ctx: RunContext, limit: int, client: Any) -> Plan:
        await pipe.watch("rq:queues")
        names = ctx.render_all(self.queues) or sorted(
            _text(m).removeprefix("rq:queue:") for m in await pipe.smembers("rq:queues"))
        now = redis_now(await pipe.time())
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(now))
        writes: list[Callable[[Pipeline], Any]] = []
        failed: dict[str, list[str]] = {}
        not_started: dict[str, list[str]] = {}
        without_job: dict[str, list[str]] = {}
        for queue in names:
            started = f"rq:wip:{queue}"
            await pipe.watch(started)
            for member in await pipe.zrangebyscore(started, "-inf", now, start=0, num=limit + 1):
                writes.append(_call("zrem", started, member))
                job_id = await self._job_of(pipe, _text(member))
                if job_id is None:
                    without_job.setdefault(queue, []).append(_text(member))
                    continue
                key = f"rq:job:{job_id}"
                status, job_ttl = await pipe.hmget(key, ["status", "failure_ttl"])
                if _text(status) != "started":
                    not_started.setdefault(queue, []).append(job_id)
                    continue
                ttl = int(_text(job_ttl)) if job_ttl is not None and _text(job_ttl).isdigit() else 0
                ttl = ttl or int(self.failure_ttl)
                failed.setdefault(queue, []).append(job_id)
                writes += [
                    _call("zadd", f"rq:failed:{queue}", {job_id: now + ttl}),
                    _call("hset", key, mapping={
                        "status": "failed", "ended_at": stamp,
                        "exc_info": "taskmedic: abandoned by its worker (started-registry lease expired)"}),
                    _call("expire", key, ttl),
                ]
        entries = sum(len(v) for group in (failed, not_started, without_job) for v in group.values())
        return Plan(entries, writes, {
            "failed": sum(len(v) for v in failed.values()), "jobs": {q: ids[:50] for q, ids in failed.items()},
            "not_started": {q: ids[:50] for q, ids in not_started.items()},
            "without_job": {q: ids[:50] for q, ids in without_job.items()}})

    @staticmethod
    async def _job_of(pipe: Pipeline, member: str) -> str | None:
        """The job a started-registry entry names, if its hash still exists (watched from here on)."""
        for job_id in (member, member.rpartition(":")[0]) if ":" in member else (member,):
            key = f"rq:job:{job_id}"
            await pipe.watch(key)
            if job_id and await pipe.exists(key):
                return job_id
        return None


OPERATIONS = ("lrem", "lrem_where", "hdel", "zrem", "delete", "rpush", "lpush", "xack", "requeue_unacked",
              "fail_abandoned")


class RedisSpec(Model):
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


class RedisStep(StepType[RedisSpec]):
    key: ClassVar[str] = "redis"
    spec: ClassVar[type[Model]] = RedisSpec

    async def run(self, spec: RedisSpec, ctx: RunContext) -> StepResult:
        client = ctx.redis(spec.system)
        try:
            async with client.pipeline(transaction=True) as pipe:
                for _ in range(ATTEMPTS):
                    try:
                        return await self._attempt(pipe, spec, ctx, client)
                    except WatchError:
                        await pipe.reset()  # type: ignore[no-untyped-call]
        except RedisError as e:
            raise StepFailed(f"redis: {type(e).__name__}: {e}") from None
        raise StepFailed(f"the keys kept changing under {spec.operation}; gave up after {ATTEMPTS} attempts")

    async def _attempt(self, pipe: Pipeline, spec: RedisSpec, ctx: RunContext, client: Any) -> StepResult:
        plan = await spec.chosen.plan(pipe, ctx, spec.max_items, client)
        detail = {"system": spec.system, "operation": spec.operation, **plan.detail}
        if plan.count > spec.max_items:
            raise Refused(f"{spec.operation} would touch {plan.count} items, more than max_items {spec.max_items}",
                          detail)
        if ctx.dry_run or not plan.writes:
            await pipe.reset()  # type: ignore[no-untyped-call]  # drops the WATCH
            return StepResult(rows=plan.count, detail=detail)
        pipe.multi()  # type: ignore[no-untyped-call]
        for write in plan.writes:
            write(pipe)
        await pipe.execute()
        return StepResult(rows=plan.count, detail=detail)
