"""`recover_worker_gone` on odd RQ state: a key of another type where a write goes (MULTI/EXEC
does not roll back), a worker that is stopped (SIGSTOP) rather than dead."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import redis
from rq import Queue, Retry
from rq.job import Job

from tests.polling import wait_until
from tests.remediator.kit import Site, execute
from tests.remediator.test_rq_worker_gone import LABELS, PLAYBOOK, setup_with_rq, take
from tests.workers.rq_run import rq_worker, started, unique


async def test_a_retry_whose_queue_key_has_another_type_does_not_strand_the_job(site: Site) -> None:
    conn = redis.Redis.from_url(site.redis_url)
    queue = Queue("work", connection=conn)
    job = queue.enqueue("tests.workers.rq_jobs.slow", 120, job_id="retried", retry=Retry(max=1), job_timeout=300)
    take(conn, queue, job, "gone-worker")
    conn.delete(queue.key)
    conn.set(queue.key, "odd")  # another client wrote a string there
    report = await execute(setup_with_rq(site), LABELS, playbook=PLAYBOOK)
    status = Job.fetch("retried", connection=conn).get_status(refresh=True)
    in_started = conn.zcard("rq:wip:work") > 0
    assert in_started or status != "queued", (report.outcome, report.error, status)
    assert report.outcome == "failed" and "'rq:queue:work' is a string, not a list" in (report.error or "")
    assert in_started and status == "started"  # nothing written


async def test_a_stopped_rq_worker_whose_key_ran_low_is_left_alone(site: Site, tmp: Path) -> None:
    """SIGSTOP of a real RQ worker and its horse (a frozen VM, a swap storm): its key's TTL runs
    down (shortened here, as if a minute had passed), but its connection still subscribes to
    its channel: orphaned, never gone; nothing is touched, and after SIGCONT it finishes."""
    conn = redis.Redis.from_url(site.redis_url)
    queue = Queue("work", connection=conn)
    name = unique("frozen")
    with rq_worker(site.redis_url, name, "work", tmp) as worker:
        queue.enqueue("tests.workers.rq_jobs.slow", 3, job_id="frozen-job", job_timeout=300)
        wait_until(lambda: started(site.redis_url, "work"), 30, "the job to start")
        family = [worker, *worker.children(recursive=True)]
        for p in family:
            p.send_signal(signal.SIGSTOP)
        try:
            conn.pexpire(f"rq:worker:{name}", 1000)
            time.sleep(1.5)  # the key is gone: only the channel's subscriber says it lives
            report = await execute(setup_with_rq(site), LABELS, playbook=PLAYBOOK)
        finally:
            for p in family:
                p.send_signal(signal.SIGCONT)
        assert report.outcome == "skipped", (report.outcome, report.error)
        wait_until(lambda: Job.fetch("frozen-job", connection=conn).get_status(refresh=True) == "finished", 30,
                   "the frozen job to finish after SIGCONT")
    assert conn.llen("rq:queue:work") == 0 and conn.zcard("rq:failed:work") == 0
