"""A key of another Redis type than the engine's layout expects. Redis' MULTI/EXEC does not roll
back: a command that fails with WRONGTYPE inside EXEC leaves the others applied."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from tests.attack.kit import judge, run_step
from tests.exporter.helpers import value
from tests.remediator.kit import Site

DEAD = "host-a:111:dead0"


def seed_dead_sidekiq(r: redis.Redis, queue: str = "default") -> str:
    seconds, _ = r.time()
    job = json.dumps({"class": "HardJob", "args": [1], "jid": "jid-dead", "queue": queue,
                      "enqueued_at": seconds - 50})
    r.sadd("processes", DEAD)
    r.hset(DEAD, mapping={"beat": str(seconds - 30), "busy": "1", "quiet": "false"})
    r.hset(f"{DEAD}:workers", "tid-1", json.dumps({"queue": queue, "payload": job, "run_at": seconds - 40}))
    for key in (DEAD, f"{DEAD}:workers"):  # its last beat, 30 s ago, re-expired them to 60 s
        r.expire(key, 30)
    return job


async def test_a_push_that_fails_with_wrongtype_does_not_lose_the_only_copy_of_a_sidekiq_job(site: Site) -> None:
    """The dead process' job names queue `other`, whose key is not a list (an odd client wrote
    a string there) and which `queues` does not list. The step must not take the job out of
    the process' hash unless it went back onto its queue."""
    r = redis.Redis.from_url(site.redis_url)
    job = seed_dead_sidekiq(r, "other")
    r.set("queue:other", "not a list")
    report = await run_step(site, "sidekiq")
    kept = r.hget(f"{DEAD}:workers", "tid-1")
    queued = r.lrange("queue:other", 0, -1) if r.type("queue:other") == b"list" else []
    assert kept is not None or job.encode() in queued, (report.outcome, report.error)
    assert report.outcome == "failed" and "'queue:other' is a string, not a list" in (report.error or "")
    assert r.sismember("processes", DEAD) and r.exists(DEAD)  # nothing of the holder's was written


async def test_a_dry_run_says_the_push_would_fail(site: Site) -> None:
    r = redis.Redis.from_url(site.redis_url)
    seed_dead_sidekiq(r, "other")
    r.set("queue:other", "not a list")
    report = await run_step(site, "sidekiq", dry_run=True)
    assert report.outcome == "failed" and "'queue:other' is a string" in (report.error or ""), report.error


async def test_one_queue_key_of_another_type_does_not_blind_the_whole_collector(site: Site, tmp: Path) -> None:
    """Sidekiq lists queue `odd` whose key is a hash: the dead process' job on `default` must
    still be judged (the odd queue skipped and reported, not the system's collector failing)."""
    r = redis.Redis.from_url(site.redis_url)
    seed_dead_sidekiq(r)
    r.sadd("queues", "default", "odd")
    r.hset("queue:odd", "x", "y")
    result = await judge(tmp, site.redis_url, "sidekiq")
    assert result.error is None, result.error
    assert value(result, "taskmedic_stuck_tasks", reason="expiring") == 1


async def test_one_process_key_of_another_type_does_not_blind_the_whole_collector(site: Site, tmp: Path) -> None:
    """A member of `processes` whose key is a list (HGET beat → WRONGTYPE)."""
    r = redis.Redis.from_url(site.redis_url)
    seed_dead_sidekiq(r)
    r.sadd("processes", "weird")
    r.rpush("weird", "x")
    r.hset("weird:workers", "tid-9", json.dumps({"queue": "default", "payload": json.dumps({"jid": "j9"})}))
    result = await judge(tmp, site.redis_url, "sidekiq")
    assert result.error is None, result.error
    assert value(result, "taskmedic_stuck_tasks", reason="expiring") == 1
    assert value(result, "taskmedic_judgement_trusted") == 0


async def test_the_step_gives_back_the_dead_process_job_next_to_an_odd_key_and_says_so(site: Site) -> None:
    r = redis.Redis.from_url(site.redis_url)
    job = seed_dead_sidekiq(r)
    r.sadd("queues", "default", "odd")
    r.hset("queue:odd", "x", "y")
    report = await run_step(site, "sidekiq", window="1s")
    assert r.lrange("queue:default", 0, -1) == [job.encode()], (report.outcome, report.error)
    assert report.steps[0].detail["unreadable"] == [
        "queue:odd: WRONGTYPE Operation against a key holding the wrong kind of value"]
