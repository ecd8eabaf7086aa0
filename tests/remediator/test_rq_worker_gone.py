"""`recover_worker_gone` and the shipped `rq-recover-worker-gone` playbook against real RQ: workers
killed mid-job (with and without their work horse), a live twin, and RQ reading back what the
step left (a live worker runs the retried job; the failed one carries its reason)."""

from __future__ import annotations

import time
from pathlib import Path

import redis
from rq import Queue, Retry
from rq.executions import Execution
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from remediator.config import Setup
from tests.polling import wait_until
from tests.remediator.kit import SHIPPED, Site, execute
from tests.workers.rq_run import kill, rq_worker, started, unique

JMI = 5  # RQ's job_monitoring_interval, shortened: a busy worker's key lives 65 s, renewed every 5 s
PLAYBOOK = "rq-recover-worker-gone"
LABELS = {"system": "rq", "reason": "worker_gone"}


def setup_with_rq(site: Site, ttl_below: str = "50s") -> Setup:
    return site.setup((SHIPPED / f"{PLAYBOOK}.yml").read_text(),
                      systems=f"  rq:\n    profile: rq\n    redis: {site.redis_url}\n"
                              f"    queues: {{worker_ttl_below: {ttl_below}}}\n")


def take(conn: redis.Redis, queue: Queue, job: Job, worker: str) -> None:
    """A worker named `worker` took the job, as RQ's worker writes it (that worker has no key
    and no channel: it is gone)."""
    with conn.pipeline() as pipe:
        pipe.lrem(queue.key, 0, job.id)
        job.prepare_for_execution(worker, pipe)
        Execution.create(job, ttl=600, pipeline=pipe)
        pipe.execute()


async def test_jobs_of_killed_workers_are_retried_or_failed_as_rq_does_and_live_ones_are_left(
        site: Site, tmp: Path) -> None:
    conn = redis.Redis.from_url(site.redis_url)
    queue = Queue("work", connection=conn)
    setup = setup_with_rq(site)
    marker = str(tmp / "retried-ran")
    jobs = [("retried", "tests.workers.rq_jobs.slow_first_time", (120, marker), Retry(max=1)),
            ("final", "tests.workers.rq_jobs.slow", (120,), None),
            ("orphan", "tests.workers.rq_jobs.slow", (40,), None),
            ("live", "tests.workers.rq_jobs.slow", (40,), None)]
    names = [unique(f"w{n}") for n in range(len(jobs))]
    with rq_worker(site.redis_url, names[0], "work", tmp, JMI) as w0, \
            rq_worker(site.redis_url, names[1], "work", tmp, JMI) as w1, \
            rq_worker(site.redis_url, names[2], "work", tmp, JMI) as w2, \
            rq_worker(site.redis_url, names[3], "work", tmp, JMI) as w3:
        for n, (job_id, func, args, retry) in enumerate(jobs, 1):
            queue.enqueue(func, *args, job_id=job_id, retry=retry, job_timeout=300)
            wait_until(lambda n=n: started(site.redis_url, "work"), 30, f"{n} jobs to be started",
                       done=lambda count, n=n: count == n)
        by_name = dict(zip(names, (w0, w1, w2, w3), strict=True))
        # each idle worker may take any job: the one to kill is the one that took it
        # the job's worker_name may be written just after its started-registry entry
        workers = {job_id: wait_until(lambda j=job_id: (conn.hget(f"rq:job:{j}", "worker_name") or b"").decode(), 10,
                                      f"{job_id}'s worker_name") for job_id, *_ in jobs}
        for job_id in ("retried", "final"):
            kill(by_name[workers[job_id]])  # parent and horse
        horse = kill(by_name[workers["orphan"]], with_horse=False)
        assert horse is not None
        for job_id in ("retried", "final", "orphan"):
            wait_until(lambda w=workers[job_id]: conn.pttl(f"rq:worker:{w}"), 25,
                       f"the key of {job_id}'s worker to miss a heartbeat", done=lambda ms: ms < 50_000)

        preview = await execute(setup, LABELS, dry_run=True, playbook=PLAYBOOK)
        assert preview.outcome == "dry_run", preview.error
        assert preview.steps[0].rows == 2
        assert conn.hget("rq:job:final", "status") == b"started"  # nothing written

        report = await execute(setup, LABELS, playbook=PLAYBOOK)
        assert report.outcome == "succeeded", report.error
        detail = report.steps[0].detail
        assert (report.steps[0].rows, detail["requeued"], detail["failed"]) == (
            2, {"work": ["retried"]}, {"work": ["final"]})
        assert detail["orphaned"] == {"work": ["orphan"]}  # its horse still runs it
        assert detail["scheduled"] == detail["rate_limited"] == {}

        # a live worker takes the retried job and RQ finishes it
        wait_until(lambda: Job.fetch("retried", connection=conn).get_status(), 60, "the retried job to finish",
                   done=lambda status: status == "finished")
        retried = Job.fetch("retried", connection=conn)
        assert (retried.retries_left, retried.return_value()) == (0, "again")
        final = Job.fetch("final", connection=conn)
        assert final.get_status() == "failed"
        assert "final" in FailedJobRegistry(queue=queue).get_job_ids(cleanup=False)
        result = final.latest_result()
        assert result is not None and f"its worker {workers['final']} is gone" in (result.exc_string or "")
        assert "AbandonedJobError" in (result.exc_string or "")
        left = StartedJobRegistry(queue=queue).get_job_ids(cleanup=False)
        assert "retried" not in left and "final" not in left
        assert Job.fetch("orphan", connection=conn).get_status() in ("started", "finished")
        assert Job.fetch("live", connection=conn).get_status() in ("started", "finished")

        again = await execute(setup, LABELS, playbook=PLAYBOOK)
        assert again.outcome == "skipped", again.error
        assert again.steps[0].rows == 0


async def test_retry_intervals_schedule_the_retry_and_a_rate_limited_job_is_left_to_rq(site: Site) -> None:
    conn = redis.Redis.from_url(site.redis_url)
    queue = Queue("work", connection=conn)
    later = queue.enqueue("os.getpid", job_id="later", retry=Retry(max=3, interval=[10, 30, 60]))
    limited = queue.enqueue("os.getpid", job_id="limited")
    conn.hset(limited.key, "rate_limit_key", "rq:rate_limit:x")
    for job in (later, limited):
        take(conn, queue, job, "ghost-" + job.id)  # no key, no channel

    report = await execute(setup_with_rq(site), LABELS, playbook=PLAYBOOK)

    assert report.outcome == "succeeded", report.error
    detail = report.steps[0].detail
    assert (detail["scheduled"], detail["rate_limited"]) == ({"work": ["later"]}, {"work": ["limited"]})
    job = Job.fetch("later", connection=conn)
    assert (job.get_status(), job.retries_left) == ("scheduled", 2)
    # RQ's Job.get_retry_interval with 3 retries left of [10, 30, 60]: the first, 10 s
    when = conn.zscore("rq:scheduled:work", "later")
    assert when is not None and 8 <= when - time.time() <= 11
    assert ScheduledJobRegistry(queue=queue).get_job_ids() == ["later"]
    assert StartedJobRegistry(queue=queue).get_job_ids(cleanup=False) == ["limited"]
    assert Job.fetch("limited", connection=conn).get_status() == "started"
