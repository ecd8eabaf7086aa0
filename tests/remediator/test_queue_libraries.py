"""`fail_abandoned` and `requeue_unacked` against the queue libraries themselves: RQ and kombu
write the keys as a real worker or producer does, and read back what the step left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection
from rq import Queue
from rq.executions import Execution
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry

from remediator.config import load_setup
from tests.conftest import flushed
from tests.remediator.kit import Site, execute
from tests.services import RedisServer


def book(operation: str, max_items: int = 1000) -> str:
    return ("name: t\nmatch: {alertname: TaskmedicStuckTasks}\nsteps:\n  - name: queue surgery\n"
            f"    redis: {{system: jobs, max_items: {max_items}, {operation}}}\n")


def rq_started(conn: redis.Redis, queue: Queue, job_id: str, lease: int, **options: int) -> Job:
    """A job a worker took, as RQ's own worker writes it: status started, an execution in the
    started registry whose score is now + `lease`."""
    job = queue.enqueue("os.getpid", job_id=job_id, **options)
    with conn.pipeline() as pipe:
        pipe.lrem(queue.key, 0, job.id)  # dequeued
        job.prepare_for_execution("worker-1", pipe)
        Execution.create(job, ttl=lease, pipeline=pipe)
        pipe.execute()
    return job


async def test_rq_abandoned_jobs_fail_as_rq_cleanup_fails_them_and_no_job_hash_is_created(site: Site) -> None:
    conn = redis.Redis.from_url(site.redis_url)
    queue = Queue("default", connection=conn)
    rq_started(conn, queue, "abandoned", lease=1, failure_ttl=600)
    rq_started(conn, queue, "finished", lease=1).set_status("finished")  # died before removing its entry
    rq_started(conn, queue, "expired", lease=1)
    conn.delete("rq:job:expired")  # its hash expired meanwhile
    rq_started(conn, queue, "busy", lease=600)
    # RQ 1.x: the entry is the bare job id, and a custom id could contain ':'.
    conn.hset("rq:job:tenant:42", mapping={"status": "started", "origin": "default"})
    conn.zadd("rq:wip:default", {"tenant:42": time.time() - 5})
    time.sleep(1.2)  # the leases of 1 s run out
    keys_before = set(conn.keys("rq:job:*"))

    report = await execute(site.setup(book("fail_abandoned: {}")), {"system": "jobs"})

    assert report.outcome == "succeeded", report.error
    detail = report.steps[0].detail
    assert (report.steps[0].rows, detail["failed"]) == (4, 2)
    assert sorted(detail["jobs"]["default"]) == ["abandoned", "tenant:42"]
    assert detail["not_started"] == {"default": ["finished"]}
    assert [m.split(":")[0] for m in detail["without_job"]["default"]] == ["expired"]
    assert set(conn.keys("rq:job:*")) == keys_before  # nothing created (no rq:job:tenant, no rq:job:expired)
    started = StartedJobRegistry(queue=queue)
    assert started.get_job_ids(cleanup=False) == ["busy"]
    failed = FailedJobRegistry(queue=queue)
    assert sorted(failed.get_job_ids(cleanup=False)) == ["abandoned", "tenant:42"]
    abandoned = Job.fetch("abandoned", connection=conn)
    assert abandoned.get_status() == "failed"
    assert b"abandoned by its worker" in (conn.hget(abandoned.key, "exc_info") or b"")
    assert 590 < conn.ttl("rq:job:abandoned") <= 600  # the job's own failure_ttl, as RQ keeps it
    assert 590 < (conn.zscore("rq:failed:default", "abandoned") or 0) - time.time() <= 600
    assert Job.fetch("finished", connection=conn).get_status() == "finished"
    failed.requeue("abandoned")  # RQ reads what the step wrote and can retry it
    assert queue.job_ids == ["abandoned"]


# A Celery-style worker on kombu's Redis transport: it declares two queues bound to one direct
# exchange with the same routing key (a task queue and an audit copy), publishes four messages
# of different priorities, takes the four from the task queue without acknowledging them, and
# waits — to be SIGKILLed, as an OOM-killed worker is.
DYING_WORKER = """
import sys, time
from kombu import Connection, Exchange, Queue, Producer
with Connection(sys.argv[1]) as conn:
    channel = conn.channel()
    tasks = Exchange("tasks", type="direct")
    work, audit = Queue("work", tasks, routing_key="work"), Queue("work-audit", tasks, routing_key="work")
    for queue in (work, audit):
        queue(channel).declare()
    producer = Producer(channel, exchange=tasks)
    for n, priority in enumerate([0, 5, 9, 2]):
        producer.publish({"n": n}, routing_key="work", priority=priority, headers={"n": n})
    taken = [work(channel).get(no_ack=False) for _ in range(4)]
    assert all(taken)
    print("taken", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def second_db(redis_server: RedisServer) -> Iterator[str]:
    yield from flushed(redis_server, 1)


def worker_dies_holding_messages(url: str) -> redis.Redis:
    proc = subprocess.Popen([sys.executable, "-c", DYING_WORKER, url], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"taken\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    client = redis.Redis.from_url(url)
    assert client.zcard("unacked_index") == 4
    for tag, score in client.zrange("unacked_index", 0, -1, withscores=True):
        client.zadd("unacked_index", {tag: score - 7200})  # delivered two hours ago
    return client


def queues_of(client: redis.Redis) -> dict[bytes, list[tuple[Any, ...]]]:
    """Every list (queue) with its messages as (n, redelivered flags, priority), in order."""
    out = {}
    for key in client.keys("*"):
        if client.type(key) == b"list":
            out[key] = [(m["headers"]["n"], m["headers"].get("redelivered"),
                         m["properties"]["delivery_info"].get("redelivered"), m["properties"].get("priority"))
                        for m in map(json.loads, client.lrange(key, 0, -1))]
    return out


async def test_celery_unacked_messages_are_restored_exactly_as_kombu_restores_them(
        site: Site, second_db: str) -> None:
    ours, theirs = worker_dies_holding_messages(site.redis_url), worker_dies_holding_messages(second_db)

    with Connection(second_db) as conn:  # kombu's own restore pass, as a live worker runs it
        conn.default_channel.qos.restore_visible(num=100)
    report = await execute(site.setup(book("requeue_unacked: {older_than: 1h}")))

    assert report.outcome == "succeeded", report.error
    assert report.steps[0].rows == 4
    assert queues_of(ours) == queues_of(theirs)
    restored = queues_of(ours)
    # Messages n=0..3 had priorities 0, 5, 9, 2: each went back to both queues bound with its
    # routing key, into the sub-queue of its priority step (5 → 3, 2 → 0); the audit queue also
    # still holds the copies nobody consumed.
    assert {key: [m[0] for m in messages] for key, messages in restored.items()} == {
        b"work": [3, 0], b"work\x06\x163": [1], b"work\x06\x169": [2],
        b"work-audit": [3, 0, 3, 0], b"work-audit\x06\x163": [1, 1], b"work-audit\x06\x169": [2, 2]}
    assert all(m[1:3] == (True, True) for m in restored[b"work"])
    assert ours.zcard("unacked_index") == 0 and ours.hlen("unacked") == 0


# A Celery worker (the tests' real Celery app and task) that publishes `slow` at priorities 0..9,
# takes all ten with acks_late and is SIGKILLed holding them.
DYING_CELERY_WORKER = """
import json, sys, time
from tests.workers.celery_app import app, slow
app.conf.broker_transport_options = json.loads(sys.argv[1])
with app.connection_for_write() as conn:
    channel = conn.default_channel
    app.amqp.queues["celery"](channel).declare()
    for priority in range(10):
        slow.apply_async(args=[0], priority=priority, connection=conn)
    taken = [channel.basic_get("celery", no_ack=False) for _ in range(10)]
    assert all(taken)
    print("taken", flush=True)
    time.sleep(600)
"""
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("transport_steps", "system_steps", "playbook_steps"), [
    (list(range(10)), list(range(10)), None),  # one sub-queue per priority; the step takes the system's
    (None, None, [3, 6, 9]),  # kombu's default steps, spelled in the playbook with 0 implied
], ids=["ten-steps-from-the-system", "default-steps-without-0"])
async def test_celery_tasks_requeued_by_the_remediator_are_read_back_by_celery_in_priority_order(
        site: Site, transport_steps: list[int] | None, system_steps: list[int] | None,
        playbook_steps: list[int] | None) -> None:
    options = {"priority_steps": transport_steps} if transport_steps else {}
    proc = subprocess.Popen([sys.executable, "-c", DYING_CELERY_WORKER, json.dumps(options)], stdout=subprocess.PIPE,
                            env={**os.environ, "TASKMEDIC_TEST_BROKER": site.redis_url, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"taken\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    client = redis.Redis.from_url(site.redis_url)
    for tag, score in client.zrange("unacked_index", 0, -1, withscores=True):
        client.zadd("unacked_index", {tag: score - 7200})
    systems = f"  celery:\n    profile: celery\n    redis: {site.redis_url}\n"
    if system_steps:
        systems += f"    queues: {{priority_steps: {system_steps}}}\n"
    requeue = {"older_than": "1h", **({"priority_steps": playbook_steps} if playbook_steps else {})}
    playbook = ("name: t\nmatch: {alertname: TaskmedicStuckTasks}\nsteps:\n  - name: requeue\n"
                f"    redis: {{system: celery, requeue_unacked: {json.dumps(requeue)}}}\n")

    report = await execute(load_setup(str(site.write(playbook, systems=systems))))

    assert report.outcome == "succeeded", report.error
    assert report.steps[0].rows == 10
    app = Celery("reader", broker=site.redis_url, broker_transport_options=options)
    with app.connection_for_read() as conn:
        channel: Any = conn.default_channel
        for key in client.keys("celery*"):
            priorities = {json.loads(m)["properties"]["priority"] for m in client.lrange(key, 0, -1)}
            assert {channel._q_for_pri("celery", p) for p in priorities} == {key.decode()}  # kombu's own name
        read = [channel.basic_get("celery", no_ack=True) for _ in range(11)]
    assert read[-1] is None
    assert [m.properties["priority"] for m in read[:-1]] == list(range(10))  # kombu reads step 0 first
