"""The shipped playbook arq-give-back-held-work (an `engine` step, window 30 s here) on real arq
0.28 workers (tests/workers/arq_harness.py): giving back the job of
a queue whose every worker was SIGKILLed, the way arq's own recovery does once the job's
in-progress key expires (job_timeout + 10 s after its start): the key is deleted, and the job,
which never left its queue, is first in line for the next worker of that queue.

arq names no worker, so the step can only act on a queue whose shared health key has stayed
missing for `dead_after` (4 s here; the workers rewrite it every 1 s). Until a worker of that
queue comes back nobody takes the job: the step's window is how long it waits for one.
job_timeout 60 s, so no in-progress key expires by itself while a test runs."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from remediator.config import Setup, load_setup
from remediator.engine import Report
from tests.polling import await_until, wait_until
from tests.remediator.kit import SHIPPED, Site, execute
from tests.workers import arq_harness as arq

PLAYBOOK = "arq-give-back-held-work"
LABELS = {"alertname": "TaskmedicStuckTasks", "system": "arq", "reason": "worker_gone"}
DEAD_AFTER = 4.0
RUN_S = 3.0  # the orphan's own length: killed early in its first run, it ends in its second


def arq_setup(site: Site, window: str = "30s") -> Setup:
    """The shipped playbook (its window set), its `arq` system on the test's Redis with the test's
    queues and dead_after."""
    shipped = (SHIPPED / f"{PLAYBOOK}.yml").read_text()
    assert "window: 60s" in shipped
    systems = (f"  arq: {{profile: arq, redis: '{site.redis_url}', queues: {{names: [doomed, steady],\n"
               f"        engine: {{heartbeat: {{dead_after: {DEAD_AFTER:g}s}}}}}}}}\n")
    return load_setup(str(site.write(shipped.replace("window: 60s", f"window: {window}"), systems=systems)))


class Workers:
    """The arq workers a test starts, each one job at a time, SIGKILLed at the end."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, queue: str) -> subprocess.Popen[bytes]:
        proc = arq.start_worker(self.site.redis_url, queue, max_jobs=1, job_timeout=60, health_check_interval=1,
                                log_path=self.site.tmp / f"{queue}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            arq.kill(proc)


@pytest.fixture
def workers(site: Site) -> Iterator[Workers]:
    arq.ensure_installed()
    started = Workers(site)
    yield started
    started.close()


def orphaned(site: Site, workers: Workers) -> tuple[str, subprocess.Popen[bytes]]:
    """A job whose queue's only worker was SIGKILLed while running it, once the queue's health
    key has expired: held by its in-progress key, judged dead after dead_after more."""
    doomed = workers.start("doomed")
    orphan = arq.enqueue_sleep(site.redis_url, "doomed", RUN_S)
    arq.wait_started(site.redis_url, orphan)
    arq.kill(doomed)
    client = redis.Redis.from_url(site.redis_url)
    try:
        wait_until(lambda: not client.exists(arq.health_check_key("doomed")), 5, "the health key to expire")
    finally:
        client.close()
    return orphan, doomed


async def start_when_given_back(site: Site, workers: Workers, job: str) -> subprocess.Popen[bytes]:
    """A worker of the doomed queue started once the job's in-progress key is gone (earlier, its
    health key would make the queue alive again, and the step would rightly leave it alone)."""
    client = redis.Redis.from_url(site.redis_url)
    try:
        await await_until(lambda: not client.exists(arq.in_progress_key(job)), 30, "the job to be given back",
                          interval=0.1)
    finally:
        client.close()
    return await asyncio.to_thread(workers.start, "doomed")


def step(report: Report) -> dict[str, object]:
    (record,) = report.steps
    return {"outcome": record.outcome, "rows": record.rows, "given_back": record.detail.get("given_back")}


async def test_the_dead_queues_job_is_given_back_run_to_its_end_and_the_live_queues_job_untouched(
        site: Site, workers: Workers, r: redis.Redis) -> None:
    steady = workers.start("steady")
    running = arq.enqueue_sleep(site.redis_url, "steady", 300)
    assert arq.wait_started(site.redis_url, running) == [arq.JobStart(steady.pid, 1)]
    orphan, doomed = orphaned(site, workers)
    setup = arq_setup(site)

    dry = await execute(setup, LABELS, dry_run=True)
    assert dry.outcome == "dry_run", dry.error
    assert step(dry) == {"outcome": "dry_run", "rows": 1, "given_back": {"doomed": [orphan]}}
    assert r.get(arq.in_progress_key(orphan)) == b"1" and r.get(arq.retry_key(orphan)) == b"1"

    run = asyncio.create_task(execute(setup, LABELS))
    restarted = await start_when_given_back(site, workers, orphan)
    report = await run
    assert report.outcome == "succeeded", report.error
    assert step(report) == {"outcome": "ok", "rows": 1, "given_back": {"doomed": [orphan]}}

    # The restarted worker ran the orphan again (arq's try 2) to its end; arq then removed it.
    wait_until(lambda: arq.job_finished(site.redis_url, orphan), RUN_S + 10, "the orphan to run to its end")
    assert arq.job_starts(site.redis_url, orphan) == [arq.JobStart(doomed.pid, 1), arq.JobStart(restarted.pid, 2)]
    wait_until(lambda: r.zscore("doomed", orphan) is None, 5, "arq to remove the finished job from its queue")
    assert r.exists(arq.result_key(orphan)) and not r.exists(arq.in_progress_key(orphan))
    # The live queue's job was never touched.
    assert arq.job_starts(site.redis_url, running) == [arq.JobStart(steady.pid, 1)]
    assert r.get(arq.in_progress_key(running)) == b"1" and r.get(arq.retry_key(running)) == b"1"
    assert not arq.job_finished(site.redis_url, running)

    again = await execute(setup, LABELS)
    assert again.outcome == "skipped", again.error
    assert arq.job_starts(site.redis_url, running) == [arq.JobStart(steady.pid, 1)]


async def test_with_no_live_worker_the_step_fails_and_the_job_stays_given_back_once(
        site: Site, workers: Workers, r: redis.Redis) -> None:
    orphan, doomed = orphaned(site, workers)
    setup = arq_setup(site, window="5s")  # no shorter than dead_after (4 s): the step would be refused

    report = await execute(setup, LABELS)
    assert report.outcome == "failed"
    assert "doomed was not picked up within 5s" in (report.error or "")
    assert step(report) == {"outcome": "failed", "rows": 0, "given_back": {"doomed": [orphan]}}
    # Given back: unlocked, still (once) first in its queue, its try count untouched until it runs.
    assert not r.exists(arq.in_progress_key(orphan))
    assert r.zrange("doomed", 0, -1) == [orphan.encode()] and r.get(arq.retry_key(orphan)) == b"1"

    again = await execute(setup, LABELS)
    assert again.outcome == "skipped", again.error  # nothing is held any more

    restarted = workers.start("doomed")
    wait_until(lambda: arq.job_finished(site.redis_url, orphan), RUN_S + 10, "the orphan to run to its end")
    assert arq.job_starts(site.redis_url, orphan) == [arq.JobStart(doomed.pid, 1), arq.JobStart(restarted.pid, 2)]


async def test_two_runs_at_once_give_the_job_back_once(site: Site, workers: Workers) -> None:
    orphan, doomed = orphaned(site, workers)
    setup = arq_setup(site)

    both = asyncio.gather(execute(setup, LABELS), execute(setup, LABELS))
    restarted = await start_when_given_back(site, workers, orphan)
    first, second = await both
    reports = sorted((first, second), key=lambda rep: rep.outcome)
    assert [rep.outcome for rep in reports] == ["skipped", "succeeded"], [rep.error for rep in reports]
    assert step(reports[1])["given_back"] == {"doomed": [orphan]}
    assert (reports[0].steps[0].rows, reports[0].steps[0].detail["dead"]) == (0, [orphan])  # judged, found given back

    wait_until(lambda: arq.job_finished(site.redis_url, orphan), RUN_S + 10, "the orphan to run to its end")
    time.sleep(1.0)  # a second give-back would have shown as a third start by now
    assert arq.job_starts(site.redis_url, orphan) == [arq.JobStart(doomed.pid, 1), arq.JobStart(restarted.pid, 2)]
