"""The `redis` step's queue-library repairs: what Celery's (kombu's) and RQ's own recovery would
do for a worker that died holding work, spelled with the shared wire formats (`taskmedic.wire`)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from pydantic import Field
from redis.asyncio.client import Pipeline

from remediator.steps.redis_plan import Operation, Plan, Target, Write, call
from remediator.templating import Template
from taskmedic.config.model import Duration, System
from taskmedic.connections import redis_now, redis_text
from taskmedic.wire import kombu, rq


class RequeueUnacked(Operation):
    """Celery (kombu's Redis transport): give back the messages a dead worker took more than
    `older_than` ago, the way kombu's own restore pass (`restore_visible` → `restore_by_tag` →
    `_do_restore_message`) does: the message, marked redelivered, is pushed on the consuming end
    of every queue its exchange's bindings route its routing key to (as for a direct exchange,
    kombu's default), into the sub-queue kombu reads for its priority, and its `unacked` and
    `unacked_index` entries go. Newest first, as kombu does, so the oldest is consumed first."""

    older_than: Duration = Field(default=3600.0, gt=0)
    priority_steps: kombu.PrioritySteps | None = None  # default: the system's queues.priority_steps

    def steps(self, system: System) -> list[int]:
        if self.priority_steps is not None:
            return self.priority_steps
        source = system.queues
        if source is not None and source.type == "celery":
            return source.priority_steps
        return list(kombu.DEFAULT_PRIORITY_STEPS)

    async def plan(self, pipe: Pipeline, at: Target) -> Plan:
        steps = self.steps(at.system)
        await pipe.watch(kombu.UNACKED, kombu.UNACKED_INDEX)
        cutoff = redis_now(await pipe.time()) - self.older_than
        tags: list[Any] = await pipe.zrangebyscore(kombu.UNACKED_INDEX, "-inf", cutoff, start=0, num=at.limit + 1)
        tags.reverse()  # kombu restores the newest first
        payloads = await pipe.hmget(kombu.UNACKED, tags) if tags else []
        bindings: dict[str, list[kombu.Binding]] = {}  # each exchange's, read once
        writes: list[Write] = []
        queues: Counter[str] = Counter()
        unroutable: list[str] = []
        for tag, payload in zip(tags, payloads, strict=True):
            entry = kombu.parse_unacked(payload)
            if entry is not None and isinstance(entry.message, dict):
                targets = await self._lookup(pipe, bindings, entry)
                if not targets:
                    unroutable.append(redis_text(tag))  # left where it is: kombu would drop it
                    continue
                message = kombu.redelivered(entry.message)
                body = json.dumps(message)
                for queue in targets:
                    key = kombu.sub_queue_for(queue, message, steps)
                    writes.append(call("rpush", key, body))  # kombu restores on the consuming end
                    queues[redis_text(key)] += 1
            # kombu drops the index entries of an unreadable message too
            writes += [call("zrem", kombu.UNACKED_INDEX, tag), call("hdel", kombu.UNACKED, tag)]
        detail: dict[str, Any] = {"older_than": self.older_than, "queues": dict(queues)}
        if unroutable:
            detail["unroutable"] = unroutable[:50]
        return Plan(len(tags) - len(unroutable), writes, detail)

    @staticmethod
    async def _lookup(pipe: Pipeline, bindings: dict[str, list[kombu.Binding]], entry: kombu.Unacked) -> list[bytes]:
        """The queues the entry's exchange routes its routing key to; the anonymous exchange
        routes to the queue named by the routing key."""
        routing_key = entry.routing_key.encode()
        if not entry.exchange:
            return [routing_key] if routing_key else []
        if entry.exchange not in bindings:
            key = kombu.binding_key(entry.exchange)
            await pipe.watch(key)
            members = await pipe.smembers(key)
            bindings[entry.exchange] = [b for b in map(kombu.parse_binding, members) if b is not None]
        return kombu.bound_queues(bindings[entry.exchange], routing_key)


class FailAbandoned(Operation):
    """RQ: what RQ's own `StartedJobRegistry.cleanup` does with entries of the started registry
    whose lease has run out, so the jobs can be inspected or requeued.

    An entry names the job whose hash exists (`rq.job_id_candidates`). A job still `started`
    moves to the failed registry for its own `failure_ttl` (else the step's), its hash says
    `failed` and expires with it, as RQ's failure path does. An entry whose job has another
    status (it finished, its worker died before removing the entry) or whose hash is gone
    (expired) only leaves the started registry: a job hash is never created. Unlike RQ, a job
    with retries left is failed too (`rq requeue` it), and no failure callback or dependent
    runs: those live in the application's code."""

    queues: list[Template] = Field(default_factory=list)  # default: every queue in rq:queues
    failure_ttl: Duration = Field(default=rq.DEFAULT_FAILURE_TTL, gt=0)

    async def plan(self, pipe: Pipeline, at: Target) -> Plan:
        await pipe.watch(rq.QUEUES)
        names = at.ctx.render_all(self.queues) or sorted(rq.queue_name(m) for m in await pipe.smembers(rq.QUEUES))
        now = redis_now(await pipe.time())
        writes: list[Write] = []
        failed: dict[str, list[str]] = {}
        not_started: dict[str, list[str]] = {}
        without_job: dict[str, list[str]] = {}
        for queue in names:
            started = rq.registry_key("started", queue)
            await pipe.watch(started)
            for member in await pipe.zrangebyscore(started, "-inf", now, start=0, num=at.limit + 1):
                writes.append(call("zrem", started, member))
                job_id = await self._job_of(pipe, redis_text(member))
                if job_id is None:
                    without_job.setdefault(queue, []).append(redis_text(member))
                    continue
                status, job_ttl = await pipe.hmget(rq.job_key(job_id), ["status", "failure_ttl"])
                if redis_text(status) != "started":
                    not_started.setdefault(queue, []).append(job_id)
                    continue
                failed.setdefault(queue, []).append(job_id)
                writes += self._fail(queue, job_id, now, self._ttl(job_ttl))
        entries = sum(len(v) for group in (failed, not_started, without_job) for v in group.values())
        return Plan(entries, writes, {
            "failed": sum(len(v) for v in failed.values()), "jobs": {q: ids[:50] for q, ids in failed.items()},
            "not_started": {q: ids[:50] for q, ids in not_started.items()},
            "without_job": {q: ids[:50] for q, ids in without_job.items()}})

    def _ttl(self, job_ttl: Any) -> int:
        own = int(redis_text(job_ttl)) if job_ttl is not None and redis_text(job_ttl).isdigit() else 0
        return own or int(self.failure_ttl)

    @staticmethod
    def _fail(queue: str, job_id: str, now: float, ttl: int) -> list[Write]:
        key = rq.job_key(job_id)
        return [
            call("zadd", rq.registry_key("failed", queue), {job_id: now + ttl}),
            call("hset", key, mapping={
                "status": "failed", "ended_at": rq.format_time(now),
                "exc_info": "taskmedic: abandoned by its worker (started-registry lease expired)"}),
            call("expire", key, ttl),
        ]

    @staticmethod
    async def _job_of(pipe: Pipeline, member: str) -> str | None:
        """The job a started-registry entry names, if its hash still exists (watched from here on)."""
        for job_id in rq.job_id_candidates(member):
            key = rq.job_key(job_id)
            await pipe.watch(key)
            if job_id and await pipe.exists(key):
                return job_id
        return None
