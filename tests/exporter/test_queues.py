"""Redis queues with real Celery and RQ workers that get killed, and Harbor's job service layout."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import redis

from tests.exporter.helpers import collect, value
from tests.polling import wait_until
from tests.services import running

ROOT = Path(__file__).resolve().parents[2]


def celery_config(url: str, visibility: str = "1h") -> str:
    return (f"systems:\n  jobs:\n    profile: celery\n    redis: {url}\n"
            f"    queues:\n      visibility_timeout: {visibility}\n")


async def test_celery_queues_are_discovered_from_kombu_bindings(redis_url: str, tmp: Path) -> None:
    from kombu import Connection, Exchange, Queue

    with Connection(redis_url) as conn:
        exchange = Exchange("celery", type="direct")
        for name in ("reports", "scans"):
            queue = Queue(name, exchange, routing_key=name)
            conn.Producer().publish({"x": 1}, exchange=exchange, routing_key=name, declare=[queue])
    r = (await collect(tmp, celery_config(redis_url)))["queues:jobs"]
    assert value(r, "taskmedic_queue_depth", queue="reports") == 1
    assert value(r, "taskmedic_queue_depth", queue="scans") == 1
    assert value(r, "taskmedic_queue_depth", queue="celery") == 0  # configured, declared or not


async def test_celery_depth_counts_priority_sub_queues(redis_url: str, tmp: Path) -> None:
    from kombu import Connection

    with Connection(redis_url) as conn:
        producer = conn.Producer()
        for priority in (0, 0, 5, 9):  # kombu's Redis transport puts these in celery, celery\x06\x163/6/9
            producer.publish({"x": 1}, routing_key="celery", priority=priority, declare=[conn.SimpleQueue(
                "celery").queue])
    keys = {k for k in redis.Redis.from_url(redis_url).keys("celery*")}
    assert len(keys) > 1, "expected priority sub-queues to exist"
    r = (await collect(tmp, celery_config(redis_url)))["queues:jobs"]
    assert r.up, r.error
    assert value(r, "taskmedic_queue_depth", queue="celery") == 4
    assert value(r, "taskmedic_tasks", status="queued") == 4


async def test_celery_message_of_a_killed_worker_stays_unacked_and_turns_stuck(redis_url: str, tmp: Path) -> None:
    from celery import Celery

    app = Celery("producer", broker=redis_url)
    env = {"TASKMEDIC_TEST_BROKER": redis_url, "PYTHONPATH": str(ROOT)}
    client = redis.Redis.from_url(redis_url)
    with running([sys.executable, "-m", "celery", "-A", "tests.workers.celery_app", "worker", "--pool=solo",
                  "--concurrency=1", "--loglevel=warning", "--without-mingle", "--without-gossip"],
                 tmp / "celery.log", env) as worker:
        app.send_task("slow", args=[120])
        wait_until(lambda: client.hlen("unacked") == 1, 30, "the worker to take the task")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    # The worker died holding the message: it sits in `unacked` until a worker restores it.
    r = (await collect(tmp, celery_config(redis_url, "2s")))["queues:jobs"]
    assert value(r, "taskmedic_queue_unacked", queue="celery") == 1
    assert value(r, "taskmedic_stuck_tasks", reason="unacked_too_long") == 0  # not yet past the timeout
    time.sleep(2.5)
    r = (await collect(tmp, celery_config(redis_url, "2s")))["queues:jobs"]
    assert value(r, "taskmedic_stuck_tasks", reason="unacked_too_long", status="unacked") == 1
    age = value(r, "taskmedic_queue_oldest_age_seconds", queue="celery")
    assert age is None or age >= 0  # celery messages carry no enqueue time


def rq_config(url: str) -> str:
    return f"systems:\n  work:\n    profile: rq\n    redis: {url}\n"


async def test_rq_job_of_a_killed_worker_becomes_abandoned(redis_url: str, tmp: Path) -> None:
    from rq import Queue

    client = redis.Redis.from_url(redis_url)
    q = Queue("default", connection=client)
    q.enqueue("tests.workers.rq_jobs.slow", 120, job_timeout=300)
    q.enqueue("tests.workers.rq_jobs.slow", 1)  # waits behind it
    env = {"PYTHONPATH": str(ROOT)}
    with running([sys.executable, "-m", "rq.cli", "worker", "--url", redis_url, "--burst", "default"],
                 tmp / "rq.log", env) as worker:
        wait_until(lambda: client.zcard("rq:wip:default") == 1, 30, "the worker to start the job")
        for child in __import__("psutil").Process(worker.pid).children(recursive=True):
            child.kill()
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    r = (await collect(tmp, rq_config(redis_url)))["queues:work"]
    assert r.up, r.error
    assert value(r, "taskmedic_queue_depth", queue="default") == 1
    assert value(r, "taskmedic_queue_unacked", queue="default") == 1
    assert value(r, "taskmedic_tasks", status="started") == 1
    assert value(r, "taskmedic_stuck_tasks", reason="abandoned") == 0  # its lease has not expired yet
    oldest = value(r, "taskmedic_queue_oldest_age_seconds", queue="default")
    assert oldest is not None and 0 <= oldest < 120
    # RQ's lease is the job timeout plus a minute; rather than wait, move the entry's expiry score
    # to the past, exactly what the passing of that time does.
    (member,) = client.zrange("rq:wip:default", 0, -1)
    client.zadd("rq:wip:default", {member: time.time() - 1}, xx=True)
    r = (await collect(tmp, rq_config(redis_url)))["queues:work"]
    assert value(r, "taskmedic_stuck_tasks", reason="abandoned", status="started") == 1


async def test_harbor_job_service_queue_latency(redis_url: str, tmp: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    ns = "{harbor_job_service_namespace}:"
    now = time.time()
    client.sadd(ns + "known_jobs", "GARBAGE_COLLECTION", "EXECUTION_SWEEP")
    # gocraft/work pushes new jobs on the left; the right end is the oldest
    for age in (3 * 86400, 3600, 60):
        client.lpush(ns + "jobs:EXECUTION_SWEEP", json.dumps({"name": "EXECUTION_SWEEP", "id": f"j{age}",
                                                              "t": int(now - age), "args": {}}))
    client.sadd(ns + "worker_pools", "pool1", "pool2")
    client.lpush(ns + "jobs:EXECUTION_SWEEP:pool1:inprogress", json.dumps({"id": "jx", "t": int(now)}))
    client.lpush(ns + "jobs:EXECUTION_SWEEP:pool2:inprogress", json.dumps({"id": "jy", "t": int(now)}))
    client.set(ns + "jobs:EXECUTION_SWEEP:lock", 1)
    r = (await collect(tmp, f"systems:\n  harbor:\n    profile: harbor\n    redis: {redis_url}\n"
                            f"    tasks: null\n"))["queues:harbor"]
    assert r.up, r.error
    assert value(r, "taskmedic_queue_depth", queue="EXECUTION_SWEEP") == 3
    assert value(r, "taskmedic_queue_unacked", queue="EXECUTION_SWEEP") == 2
    assert value(r, "taskmedic_queue_depth", queue="GARBAGE_COLLECTION") == 0
    age = value(r, "taskmedic_queue_oldest_age_seconds", queue="EXECUTION_SWEEP")
    assert age is not None and 3 * 86400 - 10 < age < 3 * 86400 + 10
    assert value(r, "taskmedic_queue_depth", queue="EXECUTION_SWEEP:lock") is None


async def test_plain_lists_discovered_by_pattern_under_a_cap(redis_url: str, tmp: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    for i in range(30):
        client.rpush(f"work:q{i:02d}", *range(i + 1))
    cfg = (f"systems:\n  lists:\n    redis: {redis_url}\n    queues:\n      type: list\n"
           f"      names: ['work:*', 'absent']\n      max_queues: 10\n")
    r = (await collect(tmp, cfg))["queues:lists"]
    depths = [s for s in r.samples if s.name == "taskmedic_queue_depth"]
    assert len(depths) == 10
    assert value(r, "taskmedic_queue_depth", queue="absent") in (0, None)


async def test_celery_unacked_bodies_are_read_once_per_delivery_tag(redis_url: str, tmp: Path) -> None:
    from exporter.collectors.celery import CeleryQueueCollector
    from exporter.config import ExporterConfig
    from taskmedic.config import load
    from taskmedic.connections import Connections

    client = redis.Redis.from_url(redis_url)
    client.hset("unacked", "t1", json.dumps([{"body": "x"}, "", "celery"]))
    client.zadd("unacked_index", {"t1": time.time() - 10})
    path = tmp / "c.yml"
    path.write_text(celery_config(redis_url))
    cfg = load(ExporterConfig, path, environ={})
    connections = Connections("t")
    collector = CeleryQueueCollector("jobs", cfg.systems["jobs"], connections)
    try:
        await collector.collect()
        # a body rewritten under the same tag is not read again: tags never change their message
        client.hset("unacked", "t1", json.dumps([{"body": "x"}, "", "elsewhere"]))
        samples = await collector.collect()
        assert [s.labels for s in samples if s.name == "taskmedic_queue_unacked" and s.value] == \
            [(("system", "jobs"), ("queue", "celery"))]
        client.hdel("unacked", "t1")
        client.zrem("unacked_index", "t1")
        samples = await collector.collect()
        assert not [s for s in samples if s.name == "taskmedic_queue_unacked" and s.value]
        assert collector._queue_of_tag == {}
    finally:
        await connections.close()
