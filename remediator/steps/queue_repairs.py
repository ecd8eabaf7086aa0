"""The `redis` step's queue-library repairs: what Celery's (kombu's) and RQ's own recovery would
do for a worker that died holding work, spelled with the shared wire formats (`taskmedic.wire`)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

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


ABANDONED = "taskmedic: abandoned by its worker (started-registry lease expired)"


def _failure_ttl(job_ttl: Any, default: float) -> int:
    """The job's own `failure_ttl` (RQ keeps a failed job that long), else `default`."""
    own = int(redis_text(job_ttl)) if job_ttl is not None and redis_text(job_ttl).isdigit() else 0
    return own or int(default)


def failure_writes(queue: str, job_id: str, now: float, ttl: int, message: str) -> list[Write]:
    """RQ's failure path for a job no worker can finish (rq/job_lifecycle.py record_job_failure):
    the failed registry for `ttl`, status `failed`, and a failure Result without a worker, which
    is where RQ 3 reads a job's exc_info from; the hash's own `exc_info` says it to older RQs."""
    key = rq.job_key(job_id)
    results = rq.results_key(job_id)
    return [
        call("zadd", rq.registry_key("failed", queue), {job_id: now + ttl}),
        call("hset", key, mapping={"status": "failed", "ended_at": rq.format_time(now), "exc_info": message}),
        call("expire", key, ttl),
        call("xadd", results, rq.failure_result(message), maxlen=rq.RESULTS_KEPT),
        call("expire", results, ttl),
    ]


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
                writes += failure_writes(queue, job_id, now, _failure_ttl(job_ttl, self.failure_ttl), ABANDONED)
        entries = sum(len(v) for group in (failed, not_started, without_job) for v in group.values())
        return Plan(entries, writes, {
            "failed": sum(len(v) for v in failed.values()), "jobs": {q: ids[:50] for q, ids in failed.items()},
            "not_started": {q: ids[:50] for q, ids in not_started.items()},
            "without_job": {q: ids[:50] for q, ids in without_job.items()}})

    @staticmethod
    async def _job_of(pipe: Pipeline, member: str) -> str | None:
        """The job a started-registry entry names, if its hash still exists (watched from here on)."""
        for job_id in rq.job_id_candidates(member):
            key = rq.job_key(job_id)
            await pipe.watch(key)
            if job_id and await pipe.exists(key):
                return job_id
        return None


JOB_FIELDS = ("status", "worker_name", "failure_ttl", "retries_left", "retry_intervals", "enqueue_at_front_on_retry",
              "ttl", "rate_limit_key")


@dataclass
class Recovered:
    requeued: dict[str, list[str]] = field(default_factory=dict)
    scheduled: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, list[str]] = field(default_factory=dict)
    rate_limited: dict[str, list[str]] = field(default_factory=dict)  # left for RQ's own cleanup
    orphaned: dict[str, list[str]] = field(default_factory=dict)  # their horse still runs them

    def add(self, outcome: dict[str, list[str]], job: rq.StartedJob) -> None:
        outcome.setdefault(job.queue, []).append(job.job_id)

    @property
    def count(self) -> int:
        return sum(len(ids) for group in (self.requeued, self.scheduled, self.failed) for ids in group.values())

    def detail(self) -> dict[str, Any]:
        return {name: {q: ids[:50] for q, ids in getattr(self, name).items()}
                for name in ("requeued", "scheduled", "failed", "rate_limited", "orphaned")}


class RecoverWorkerGone(Operation):
    """RQ: what RQ's own `StartedJobRegistry.cleanup` does with an abandoned job, for the started
    jobs whose worker is gone by RQ's own evidence (`rq.liveness`: its key missed a heartbeat and
    nothing subscribes to its channel), whether their lease has run out or not.

    The jobs are found without WATCH, then judged again under WATCH of the job's hash and its
    worker's key: a job that is no longer `started` by that worker, or whose worker's key was
    renewed, or whose channel has a subscriber again (an orphaned horse: left alone, listed), is
    not touched. As RQ's cleanup does, a job with `retries_left` is retried: at once, on its
    queue's consuming end (the front with `enqueue_at_front_on_retry`), or, with
    `retry_intervals`, in the scheduled registry for RQ's scheduler; the others are failed as
    `fail_abandoned` fails them. A rate-limited job is left for RQ's cleanup, which frees its slot;
    no failure callback, exception handler or dependent runs (they live in the application)."""

    queues: list[Template] = Field(default_factory=list)  # default: every queue in rq:queues
    worker_ttl_below: Duration | None = Field(default=None, gt=0, lt=rq.BUSY_TTL_FLOOR)  # default: the system's
    failure_ttl: Duration = Field(default=rq.DEFAULT_FAILURE_TTL, gt=0)

    def _ttl_below(self, system: System) -> float:
        if self.worker_ttl_below is not None:
            return self.worker_ttl_below
        source = system.queues
        return source.worker_ttl_below if source is not None else rq.DEFAULT_WORKER_TTL_BELOW

    async def plan(self, pipe: Pipeline, at: Target) -> Plan:
        ttl_below = self._ttl_below(at.system)
        candidates = await self._candidates(at, ttl_below)
        result = Recovered()
        writes: list[Write] = []
        if candidates:
            await pipe.watch(*sorted({rq.job_key(j.job_id) for j in candidates}
                                     | {rq.worker_key(j.worker) for j in candidates}))
            now = redis_now(await pipe.time())
            verdicts = {w: await _liveness(pipe, w, ttl_below) for w in sorted({j.worker for j in candidates})}
            for job in candidates:
                if verdicts[job.worker] == "orphaned":
                    result.add(result.orphaned, job)
                elif verdicts[job.worker] == "gone":
                    writes += await self._recover(pipe, job, now, result)
        return Plan(result.count, writes, {"worker_ttl_below": ttl_below, **result.detail()})

    async def _candidates(self, at: Target, ttl_below: float) -> list[rq.StartedJob]:
        """The started jobs whose worker looks gone (or orphaned) now, read without WATCH (live
        workers renew their entries and job hashes all the time); per queue, as many entries as
        the exporter judges (`queues.max_unacked_scanned`)."""
        client = at.client
        names = at.ctx.render_all(self.queues) or sorted(rq.queue_name(m) for m in await client.smembers(rq.QUEUES))
        source = at.system.queues
        cap = source.max_unacked_scanned if source is not None else 10_000
        entries = [(queue, redis_text(member)) for queue in names
                   for member in await client.zrange(rq.registry_key("started", queue), 0, cap - 1)]
        jobs = await rq.started_jobs(client, entries)
        verdicts = {w: await _liveness(client, w, ttl_below) for w in {j.worker for j in jobs}}
        return [j for j in jobs if verdicts[j.worker] in ("gone", "orphaned")]

    async def _recover(self, pipe: Pipeline, job: rq.StartedJob, now: float, result: Recovered) -> list[Write]:
        """The writes RQ's cleanup makes for this job, if it is still `started` by that worker."""
        fields = dict(zip(JOB_FIELDS, await pipe.hmget(rq.job_key(job.job_id), list(JOB_FIELDS)), strict=True))
        if redis_text(fields["status"] or b"") != "started" or redis_text(fields["worker_name"] or b"") != job.worker:
            return []
        started = rq.registry_key("started", job.queue)
        if await pipe.zscore(started, job.entry) is None:
            return []
        if fields["rate_limit_key"]:
            result.add(result.rate_limited, job)
            return []
        retries_left = _int(fields["retries_left"])
        writes = [call("zrem", started, job.entry)]
        if retries_left > 0:
            interval = rq.retry_interval(fields["retry_intervals"], retries_left)
            at_front = bool(_int(fields["enqueue_at_front_on_retry"]))
            writes += _retry_writes(job, now, retries_left - 1, interval, at_front, _int(fields["ttl"]))
            result.add(result.scheduled if interval else result.requeued, job)
            return writes
        message = (f"taskmedic: moved to FailedJobRegistry, as RQ moves an abandoned job (AbandonedJobError), "
                   f"at {rq.format_time(now)}: its worker {job.worker} is gone (its key missed a heartbeat and "
                   f"nothing subscribes to {rq.pubsub_channel(job.worker)})")
        result.add(result.failed, job)
        ttl = _failure_ttl(fields["failure_ttl"], self.failure_ttl)
        return writes + failure_writes(job.queue, job.job_id, now, ttl, message)


def _retry_writes(job: rq.StartedJob, now: float, retries_left: int, interval: int, at_front: bool,
                  ttl: int) -> list[Write]:
    """rq/job.py Job.retry: scheduled in `interval` seconds, or queued again at once."""
    key = rq.job_key(job.job_id)
    if interval:
        return [call("hset", key, mapping={"status": "scheduled", "retries_left": retries_left}),
                call("zadd", rq.registry_key("scheduled", job.queue), {job.job_id: int(now + interval)}),
                call("sadd", rq.QUEUES, rq.queue_key(job.queue))]
    writes = [call("hset", key, mapping={"status": "queued", "retries_left": retries_left,
                                         "enqueued_at": rq.format_time(now)}),
              call("lpush" if at_front else "rpush", rq.queue_key(job.queue), job.job_id)]
    return writes + ([call("expire", key, ttl)] if ttl > 0 else [])


async def _liveness(client: Any, worker: str, ttl_below: float) -> rq.Liveness:
    """A worker's liveness, read on a client or a WATCHing pipeline (NOPERM: unknown)."""
    try:
        pttl = await client.pttl(rq.worker_key(worker))
        ((_, subscribers),) = await client.pubsub_numsub(rq.pubsub_channel(worker))
    except ResponseError:
        return "unknown"
    return rq.liveness(int(pttl), int(subscribers), ttl_below)


def _int(raw: Any) -> int:
    try:
        return int(redis_text(raw)) if raw is not None else 0
    except ValueError:
        return 0
