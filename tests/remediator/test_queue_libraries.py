"""`fail_abandoned` and `requeue_unacked` against the queue libraries themselves: RQ and kombu
write the keys as a real worker or producer does, and read back what the step left."""

from __future__ import annotations

import time

import redis
from rq import Queue
from rq.executions import Execution
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry

from tests.remediator.kit import Site, execute


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
