"""Harbor's job service, judged the way gocraft/work judges itself (sources: docs/harbor.md).

One definition, used by the exporter to count `worker_gone`, by `targets: stuck` and by the
remediator's `harbor` step to pick what it settles and reaps:

- a worker pool is alive while the `heartbeat_at` of its `worker_pools:<id>` hash is younger than
  `dead_after` (gocraft's `deadTime`, 10 s = two heartbeats); a pool whose hash is gone is dead;
- a job is alive while a live pool has it in `jobs:<TYPE>:<pool>:inprogress`, or once its
  `job_stats` status is final (it ended; Harbor delivers that status to the database itself);
- an execution is dangling when one of its `Running` tasks' jobs (`task.job_id`) is not alive.

Age plays no part: a 13-hour replication on a pool that heartbeats is alive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from taskmedic.config.model import StuckRule
from taskmedic.connections import redis_now, redis_text
from taskmedic.wire.gocraft import Keys, job_id

DEAD_AFTER = 10.0  # gocraft dead_pool_reaper.go: deadTime = 2 x beatPeriod (heartbeater.go, 5 s)
FINAL_STATUSES = frozenset({"Success", "Error", "Stopped"})  # Harbor job.Status with code 3
ERROR_CODE = 3  # Harbor's status_code for a final status (jobservice/job/status.go)


@dataclass(frozen=True)
class Pool:
    id: str
    heartbeat_at: float | None  # None: its heartbeat hash is gone
    job_names: tuple[str, ...]


@dataclass(frozen=True)
class Pools:
    now: float  # Redis' clock
    live: dict[str, Pool]
    dead: dict[str, Pool]
    job_types: tuple[str, ...]  # known_jobs and every pool's job_names


def heartbeat_time(raw: Any) -> float | None:
    """A heartbeat hash's `heartbeat_at` (epoch seconds), None when missing or unreadable."""
    try:
        return float(redis_text(raw)) if raw is not None else None
    except ValueError:
        return None


def is_alive(heartbeat_at: float | None, has_job_names: bool, now: float, dead_after: float) -> bool:
    """gocraft's findDeadPools: dead when the heartbeat hash is gone, or when it is older than
    dead_after and names its jobs (a hash without job_names is skipped, so not reaped)."""
    if heartbeat_at is None:
        return False
    return heartbeat_at + dead_after > now or not has_job_names


async def read_pools(client: Any, keys: Keys, dead_after: float = DEAD_AFTER,
                     extra: Iterable[str] = ()) -> Pools:
    """Every pool gocraft knows (`worker_pools`) and every pool a lock_info still names (Harbor's
    reaper.go reEnqueueInProgressJobs: pools gone from the set that hold locks), alive or dead."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.smembers(keys.worker_pools)
        pipe.smembers(keys.known_jobs)
        now_reply, members, known = await pipe.execute()
    now = redis_now(now_reply)
    names = {redis_text(m) for m in members}
    types = {redis_text(k) for k in known} | set(extra)
    async with client.pipeline(transaction=False) as pipe:
        for t in sorted(types):
            pipe.hkeys(keys.lock_info(t))
        holders = await pipe.execute()
    names |= {redis_text(h) for hs in holders for h in hs}
    ordered = sorted(names)
    async with client.pipeline(transaction=False) as pipe:
        for name in ordered:
            pipe.hmget(keys.heartbeat(name), ["heartbeat_at", "job_names"])
        beats = await pipe.execute()
    live: dict[str, Pool] = {}
    dead: dict[str, Pool] = {}
    for name, (beat, jobs) in zip(ordered, beats, strict=True):
        at = heartbeat_time(beat)
        pool = Pool(name, at, tuple(j for j in redis_text(jobs).split(",") if j) if jobs else ())
        (live if is_alive(at, jobs is not None, now, dead_after) else dead)[name] = pool
        types |= set(pool.job_names)
    return Pools(now, live, dead, tuple(sorted(types)))


async def in_progress(client: Any, keys: Keys, pools: Iterable[Pool],
                      job_types: Iterable[str]) -> dict[tuple[str, str], list[bytes]]:
    """(pool, job type) → the raw entries of that pool's in-progress list, for every pair that has one."""
    pairs = [(p.id, t) for p in pools for t in sorted(set(p.job_names) | set(job_types))]
    async with client.pipeline(transaction=False) as pipe:
        for pool, t in pairs:
            pipe.lrange(keys.in_progress(t, pool), 0, -1)
        lists = await pipe.execute()
    return {pair: items for pair, items in zip(pairs, lists, strict=True) if items}


@dataclass
class Judgement:
    """Which of the asked jobs are lost, and the evidence it was read from."""

    pools: Pools
    lost: set[str] = field(default_factory=set)
    ended: set[str] = field(default_factory=set)  # not in progress, but job_stats says it finished


async def judge_jobs(client: Any, keys: Keys, job_ids: Iterable[str], dead_after: float = DEAD_AFTER) -> Judgement:
    """Judge each job id: alive (a live pool has it in progress), ended, or lost."""
    wanted = set(job_ids)
    pools = await read_pools(client, keys, dead_after)
    running = await in_progress(client, keys, pools.live.values(), pools.job_types)
    alive = {i for items in running.values() for i in map(job_id, items) if i}
    unknown = sorted(wanted - alive)
    async with client.pipeline(transaction=False) as pipe:
        for i in unknown:
            pipe.hget(keys.job_stats(i), "status")
        statuses = await pipe.execute()
    judgement = Judgement(pools)
    for i, status in zip(unknown, statuses, strict=True):
        (judgement.ended if status is not None and redis_text(status) in FINAL_STATUSES else judgement.lost).add(i)
    return judgement


@dataclass(frozen=True)
class RunningTask:
    execution_id: int
    vendor_type: str
    task_id: int
    job_id: str


# The Running tasks of Running executions, with the job ids Harbor recorded for them
# (pkg/task/task.go: Create stores the job service's job id in task.job_id).
RUNNING_TASKS_SQL = """
select e.id as execution_id, e.vendor_type, t.id as task_id, t.job_id
from execution e join task t on t.execution_id = e.id
where e.status = $1 and t.status = 'Running' and t.job_id is not null and t.job_id <> ''
  and e.start_time < now() - make_interval(secs => $2)
order by e.id, t.id
limit $3
"""


async def running_tasks(conn: Any, status: str, min_age: float, limit: int, lock: bool = False) -> list[RunningTask]:
    sql = RUNNING_TASKS_SQL + (" for update of e, t" if lock else "")
    rows = await conn.fetch(sql, status, min_age, limit)
    return [RunningTask(r["execution_id"], r["vendor_type"], r["task_id"], r["job_id"]) for r in rows]


def rule_keys(rule: StuckRule) -> Keys:
    assert rule.harbor_job_service is not None
    return Keys(rule.harbor_job_service.namespace)


async def dangling(conn: Any, client: Any, rule: StuckRule, limit: int = 10_000,
                   lock: bool = False) -> tuple[list[RunningTask], Judgement]:
    """The tasks a `harbor_job_service` rule judges stuck: Running, of an execution in the rule's
    status older than its `min_age`, whose job no live pool has in progress and that did not end."""
    assert rule.harbor_job_service is not None
    tasks = await running_tasks(conn, rule.status, rule.min_age, limit, lock)
    judgement = await judge_jobs(client, rule_keys(rule), (t.job_id for t in tasks),
                                 rule.harbor_job_service.dead_after)
    return [t for t in tasks if t.job_id in judgement.lost], judgement


async def stuck_executions(conn: Any, client: Any, rule: StuckRule, limit: int) -> list[dict[str, Any]]:
    """`targets: stuck` for a harbor rule: one row per dangling execution (`id`), oldest first,
    with its lost jobs."""
    tasks, _ = await dangling(conn, client, rule)
    rows: dict[int, dict[str, Any]] = {}
    for t in tasks:
        row = rows.setdefault(t.execution_id, {"id": t.execution_id, "status": rule.status,
                                               "vendor_type": t.vendor_type, "job_ids": []})
        row["job_ids"].append(t.job_id)
    return list(rows.values())[:limit]
