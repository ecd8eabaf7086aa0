"""`harbor` step: settle the executions whose job the job service lost, and do for dead worker
pools what gocraft/work's dead pool reaper does; then wait for the queues to move.

1. Judge, at action time, with the system's own rule (`tasks.stuck.<reason>`, a
   `harbor_job_service` check) and the same code as the exporter (`taskmedic.detection.harbor`):
   the Running tasks whose job no live pool has in progress. Their rows are locked.
2. In the run's transaction: those tasks end as `Error` (status_code 3), and each execution
   left with no live task ends as `Error` too.
3. In one MULTI/EXEC (keys WATCHed, so a pool that heartbeats again in between is left alone):
   for every dead pool (stale heartbeat, or named by a lock_info but gone from worker_pools)
   its in-progress jobs are requeued at the tail of their queue — dropped instead when they are
   the jobs settled in step 2, with their `job_stats` and `job_track:inprogress` entries, as
   Harbor drops stopped jobs — each job type's `lock` is lowered by the pool's `lock_info` count
   (not below 0) and the field deleted, and the pool leaves `worker_pools` with its heartbeat.
4. Verify that the queues move: within `window`, the oldest queued job of every job type the
   reap released is picked up; else the step fails (and the run's SQL is rolled back: the rows
   stay Running and the next run settles them). A paused queue fails at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, WatchError

from remediator.steps.base import Need, Refused, RunContext, StepFailed, StepResult, StepSpec, StepType
from taskmedic.config.model import Duration, HarborJobService, Name, StuckRule
from taskmedic.connections import redis_now, redis_text
from taskmedic.detection import harbor
from taskmedic.wire.gocraft import Keys, job_id

ATTEMPTS = 5
POLL = 0.2

SETTLE_TASKS = """
update task set status = 'Error', status_code = $3, end_time = now(), update_time = now(),
  status_message = $2 || ' (job ' || job_id || ')'
where id = any($1::int[]) and status = 'Running'
"""
SETTLE_EXECUTIONS = """
update execution e set status = 'Error', end_time = now(), update_time = now(), status_message = $2
where e.id = any($1::int[]) and e.status = $3
  and not exists (select 1 from task t where t.execution_id = e.id and t.status in ('Pending', 'Scheduled', 'Running'))
"""
MESSAGE = "taskmedic: the job service lost this job (in progress in no live worker pool); settled as Error"


class HarborSpec(StepSpec):
    system: Name
    reason: Name = "worker_gone"  # the rule of systems.<system>.tasks.stuck that judges
    window: Duration = Field(default=60.0, gt=0, le=600)  # the released queues must move within it
    max_items: int = Field(default=50, ge=0)  # more executions to settle → refused, nothing changed

    def systems(self) -> list[tuple[str, Need]]:
        return [(self.system, "database"), (self.system, "redis")]


@dataclass
class Reap:
    """What the reap found and did, per dead pool and job type."""

    pools: list[str] = field(default_factory=list)
    requeued: dict[str, list[str]] = field(default_factory=dict)  # job type → job ids
    dropped: dict[str, list[str]] = field(default_factory=dict)
    locks_released: dict[str, int] = field(default_factory=dict)  # job type → count taken off `lock`
    forgotten: list[str] = field(default_factory=list)  # settled jobs whose job_stats/track entries go

    @property
    def touched(self) -> list[str]:
        return sorted(set(self.requeued) | set(self.dropped) | set(self.locks_released))

    def detail(self) -> dict[str, Any]:
        return {"dead_pools": self.pools, "requeued": self.requeued, "dropped": self.dropped,
                "locks_released": self.locks_released}


def _rule(ctx: RunContext, spec: HarborSpec) -> tuple[StuckRule, HarborJobService]:
    tasks = ctx.system(spec.system).tasks
    rule = tasks.stuck.get(spec.reason) if tasks is not None else None
    if rule is None or rule.harbor_job_service is None:
        raise StepFailed(f"system {spec.system!r} has no harbor_job_service rule named {spec.reason!r} "
                         "under tasks.stuck (the harbor profile's is worker_gone)")
    return rule, rule.harbor_job_service


async def _plan_reap(pipe: Pipeline, keys: Keys, pools: harbor.Pools, drop: set[str],
                     dead_after: float) -> tuple[Reap, list[Any]]:
    """Read under WATCH what the reap changes; return what it does and the writes that do it."""
    reap = Reap()
    writes: list[Any] = []
    locks: dict[str, int] = {}  # job type → its lock after every dead pool's share is taken off
    for pool in pools.dead.values():
        types = sorted(set(pool.job_names) | set(pools.job_types))
        await pipe.watch(keys.heartbeat(pool.id), *(keys.in_progress(t, pool.id) for t in types),
                         *(keys.lock(t) for t in types), *(keys.lock_info(t) for t in types))
        beat, names = await pipe.hmget(keys.heartbeat(pool.id), ["heartbeat_at", "job_names"])
        now = redis_now(await pipe.time())
        if harbor.is_alive(harbor.heartbeat_time(beat), names is not None, now, dead_after):
            continue  # it heartbeats again: not ours to touch
        reap.pools.append(pool.id)
        for t in types:
            source = keys.in_progress(t, pool.id)
            for item in reversed(await pipe.lrange(source, 0, -1)):  # gocraft: RPOPLPUSH, oldest first
                jid = job_id(item) or ""
                (reap.dropped if jid in drop else reap.requeued).setdefault(t, []).append(jid)
                if jid not in drop:
                    writes.append(("lpush", keys.jobs(t), item))
            writes.append(("delete", source))
            held = await pipe.hget(keys.lock_info(t), pool.id)
            if held is not None:
                count = int(redis_text(held))
                if t not in locks:
                    locks[t] = int(redis_text(await pipe.get(keys.lock(t)) or b"0"))
                locks[t] = max(locks[t] - count, 0)
                reap.locks_released[t] = reap.locks_released.get(t, 0) + count
                writes.append(("hdel", keys.lock_info(t), pool.id))
        writes += [("srem", keys.worker_pools, pool.id), ("delete", keys.heartbeat(pool.id))]
    writes += [("set", keys.lock(t), value) for t, value in locks.items()]
    reap.forgotten = sorted(drop)
    for jid in reap.forgotten:
        writes += [("delete", keys.job_stats(jid)), ("hdel", keys.job_track, jid)]
    return reap, writes


async def reap_dead_pools(client: Any, keys: Keys, pools: harbor.Pools, drop: set[str],
                          dead_after: float, dry_run: bool) -> Reap:
    async with client.pipeline(transaction=True) as pipe:
        for _ in range(ATTEMPTS):
            try:
                reap, writes = await _plan_reap(pipe, keys, pools, drop, dead_after)
                if dry_run or not writes:
                    await pipe.reset()
                    return reap
                pipe.multi()
                for command, *args in writes:
                    getattr(pipe, command)(*args)
                await pipe.execute()
                return reap
            except WatchError:
                await pipe.reset()
    raise StepFailed(f"the job service's keys kept changing; gave up the reap after {ATTEMPTS} attempts")


async def _blocked(client: Any, keys: Keys, oldest: dict[str, bytes], window: float) -> dict[str, str]:
    """Wait until the oldest queued job of each type has been picked up; what is still waiting."""
    deadline = time.monotonic() + window
    waiting = dict(oldest)
    while waiting:
        for t in list(waiting):
            if await client.exists(keys.paused(t)):
                return {t: "the queue is paused (jobs:<type>:paused)"}
            if await client.lindex(keys.jobs(t), -1) != waiting[t]:
                del waiting[t]
        if not waiting or time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL)
    out = {}
    for t, head in waiting.items():
        lock, limit = await client.get(keys.lock(t)), await client.get(keys.max_concurrency(t))
        holders = {redis_text(k): redis_text(v) for k, v in (await client.hgetall(keys.lock_info(t))).items()}
        out[t] = (f"oldest queued job {job_id(head)} not picked up within {window:g}s "
                  f"(lock {redis_text(lock or b'0')}, max_concurrency {redis_text(limit or b'0')}, "
                  f"lock_info {holders})")
    return out


class HarborStep(StepType[HarborSpec]):
    key: ClassVar[str] = "harbor"
    spec: ClassVar[type[StepSpec]] = HarborSpec

    async def run(self, spec: HarborSpec, ctx: RunContext) -> StepResult:
        rule, service = _rule(ctx, spec)
        keys = Keys(service.namespace)
        conn = await ctx.transactions.connection(spec.system, ctx.system(spec.system))
        client = ctx.redis(spec.system)
        try:
            return await self._run(spec, ctx, rule, service, keys, conn, client)
        except RedisError as e:
            raise StepFailed(f"redis: {type(e).__name__}: {e}") from None

    async def _run(self, spec: HarborSpec, ctx: RunContext, rule: StuckRule, service: HarborJobService,
                   keys: Keys, conn: Any, client: Any) -> StepResult:
        tasks, judgement = await harbor.dangling(conn, client, rule, lock=True)
        executions = sorted({t.execution_id for t in tasks})
        detail: dict[str, Any] = {"system": spec.system, "executions": executions[:50],
                                  "jobs": sorted(t.job_id for t in tasks)[:50],
                                  "alive_pools": sorted(judgement.pools.live), "ended": sorted(judgement.ended)[:50]}
        if len(executions) > spec.max_items:
            raise Refused(f"{len(executions)} executions to settle, more than max_items {spec.max_items}", detail)
        settled = 0
        if tasks:
            status = await conn.execute(SETTLE_TASKS, [t.task_id for t in tasks], MESSAGE, harbor.ERROR_CODE)
            settled = int(status.split()[-1])
            status = await conn.execute(SETTLE_EXECUTIONS, executions, MESSAGE, rule.status)
            detail["executions_settled"] = int(status.split()[-1])
        reap = await reap_dead_pools(client, keys, judgement.pools, {t.job_id for t in tasks}, service.dead_after,
                                     ctx.dry_run)
        detail.update(reap.detail())
        rows = [{"execution_id": t.execution_id, "task_id": t.task_id, "job_id": t.job_id,
                 "vendor_type": t.vendor_type} for t in tasks]
        if not ctx.dry_run:
            oldest = {t: head for t in reap.touched if (head := await client.lindex(keys.jobs(t), -1)) is not None}
            started = time.monotonic()
            blocked = await _blocked(client, keys, oldest, spec.window)
            detail["queues_moved"] = sorted(set(oldest) - set(blocked))
            detail["waited_seconds"] = round(time.monotonic() - started, 3)
            if blocked:
                raise StepFailed("the queue did not move: " + "; ".join(f"{t}: {why}" for t, why in blocked.items()),
                                 detail)
        return StepResult(rows=settled, detail=detail, rows_returned=rows)
