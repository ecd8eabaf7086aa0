"""RQ `worker_gone`: real RQ workers killed mid-job, judged by RQ's own evidence (the worker key's
TTL and its pubsub channel's subscribers). RQ's job_monitoring_interval is shortened to 5 s, so
a busy worker's key lives 65 s and is renewed every 5 s; the threshold is 50 s (10 s of margin)."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
import redis
from rq import Queue

from exporter.snapshot import CollectorResult
from taskmedic.wire import rq as wire
from tests.exporter.helpers import collect, value
from tests.polling import wait_until
from tests.workers.rq_run import kill, rq_worker, started, unique

JMI = 5
TTL_BELOW = 50


def config(url: str, ttl_below: int = TTL_BELOW) -> str:
    return (f"systems:\n  work:\n    profile: rq\n    redis: {url}\n"
            f"    queues:\n      worker_ttl_below: {ttl_below}s\n")


async def judged(tmp: Path, url: str) -> tuple[float | None, float | None, CollectorResult]:
    r = (await collect(tmp, config(url)))["queues:work"]
    assert r.up, r.error
    return (value(r, "taskmedic_stuck_tasks", reason="worker_gone", status="started"),
            value(r, "taskmedic_judgement_trusted", system="work"), r)


def test_liveness_needs_both_a_missed_heartbeat_and_no_subscriber() -> None:
    assert wire.liveness(61_000, 1, 45) == "alive"
    assert wire.liveness(61_000, 0, 45) == "alive"  # a reconnect blip, or not yet stale: its key decides
    assert wire.liveness(44_000, 0, 45) == "gone"
    assert wire.liveness(-2, 0, 45) == "gone"  # the key expired
    assert wire.liveness(-1, 0, 45) == "gone"  # a ghost hash an orphaned horse recreated
    assert wire.liveness(44_000, 1, 45) == "orphaned"  # the horse holds the channel
    assert wire.liveness(-2, 1, 45) == "orphaned"
    assert wire.liveness(None, 0, 45) == wire.liveness(44_000, None, 45) == "unknown"


async def test_a_killed_worker_is_gone_within_the_threshold_its_live_twin_and_an_orphaned_horse_are_not(
        redis_url: str, tmp: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    names = {role: unique(role) for role in ("victim", "twin", "orphan")}
    for role, seconds in (("victim", 120), ("twin", 45), ("orphan", 35)):
        Queue(role, connection=client).enqueue("tests.workers.rq_jobs.slow", seconds, job_id=role, job_timeout=300)
    with rq_worker(redis_url, names["victim"], "victim", tmp, JMI) as victim, \
            rq_worker(redis_url, names["twin"], "twin", tmp, JMI), \
            rq_worker(redis_url, names["orphan"], "orphan", tmp, JMI) as orphan_parent:
        for role in names:
            wait_until(lambda role=role: started(redis_url, role), 30, f"the {role} worker to start its job")
        gone, trusted, _ = await judged(tmp, redis_url)
        assert (gone, trusted) == (0, 1)

        kill(victim)  # parent and horse
        horse = kill(orphan_parent, with_horse=False)
        killed = time.monotonic()
        assert horse is not None and horse.is_running()
        assert client.pubsub_numsub(wire.pubsub_channel(names["orphan"])) == [
            (wire.pubsub_channel(names["orphan"]).encode(), 1)]  # the horse inherited the subscription
        while (gone := (await judged(tmp, redis_url))[0]) == 0:
            assert time.monotonic() - killed < 30, "the killed worker was never judged gone"
            time.sleep(0.5)
        detected = time.monotonic() - killed
        # its key was last renewed 0-5 s before the kill: it has < 50 s of its 65 s left 10-15 s after
        assert gone == 1 and detected < 15 + 3, detected

        untrusted_while_horse_works = 0
        while psutil.pid_exists(horse.pid) and horse.status() != psutil.STATUS_ZOMBIE:
            gone, trusted, r = await judged(tmp, redis_url)
            assert gone == 1, "the live twin or the orphaned horse was judged gone"
            if client.hget("rq:job:orphan", "status") == b"started" and trusted == 0:
                untrusted_while_horse_works += 1
            assert time.monotonic() - killed < 60, "the orphaned horse never finished its job"
            time.sleep(1)
        assert untrusted_while_horse_works > 0  # its worker's key said dead, its channel alive
        # the orphaned horse finished its job and removed its entry: nothing contradictory left
        wait_until(lambda: client.hget("rq:job:orphan", "status"), 10, "the orphan's job to end",
                   done=lambda s: s == b"finished")
        gone, trusted, r = await judged(tmp, redis_url)
        assert (gone, trusted) == (1, 1)
        assert client.hget("rq:job:twin", "status") in (b"started", b"finished")
        assert value(r, "taskmedic_stuck_tasks", reason="abandoned") == 0  # its 65 s lease has not run out


async def test_without_permission_to_count_subscribers_nothing_is_judged_gone(redis_url: str, tmp: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    user = unique("nopubsub")
    client.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                       commands=["+@all", "-pubsub"])
    try:
        queue = Queue("default", connection=client)
        job = queue.enqueue("tests.workers.rq_jobs.slow", 1, job_id="held")
        with client.pipeline() as pipe:
            pipe.lrem(queue.key, 0, job.id)
            job.prepare_for_execution("dead-worker", pipe)  # a worker with no key and no channel
            pipe.zadd("rq:wip:default", {"held:1": time.time() + 600})
            pipe.execute()
        gone, trusted, _ = await judged(tmp, redis_url)
        assert (gone, trusted) == (1, 1)
        limited = redis_url.replace("redis://", f"redis://{user}:pw@")
        gone, trusted, _ = await judged(tmp, limited)
        assert (gone, trusted) == (0, 0)
    finally:
        client.acl_deluser(user)


@pytest.mark.parametrize("ttl_below", [0, 60])
def test_the_threshold_is_below_a_busy_workers_least_ttl(ttl_below: int, tmp: Path) -> None:
    from exporter.config import ExporterConfig
    from taskmedic.config import load

    path = tmp / "t.yml"
    path.write_text(config("redis://127.0.0.1:1/0", ttl_below))
    with pytest.raises(Exception, match="worker_ttl_below"):
        load(ExporterConfig, path, environ={})
