"""`recover_worker_gone` on odd RQ state: a key of another type where a write goes (MULTI/EXEC
does not roll back), a worker that is stopped (SIGSTOP) rather than dead."""

from __future__ import annotations

import redis
from rq import Queue, Retry
from rq.job import Job

from tests.remediator.kit import Site, execute
from tests.remediator.test_rq_worker_gone import LABELS, PLAYBOOK, setup_with_rq, take


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
