"""The shipped playbook bullmq-give-back-stalled-jobs (an `engine` step, window 30 s here) with
the bullmq profile, against real BullMQ 6.7 workers (tests/workers/bullmq_harness.py): a
SIGKILLed worker's job, left in `bull:<q>:active` once its lock expired, is given back the way
BullMQ's moveStalledJobsToWait does it (RPUSH to the consume end of wait, `stc` + 1, the marker
that wakes blocked workers, the `waiting`/`stalled` events) and run to completion by a live
worker; a job that already stalled once (`stc` 1, BullMQ's default maxStalledCount) is left for a
person, as BullMQ would fail it rather than run it again.

BullMQ's own stalled checker runs in every live worker of the queue. So that what is tested here is
taskmedic's give-back and not BullMQ's, every worker runs with stalledInterval 120 s: a worker checks
once when it starts, and then not before the test is over (the queue-wide `stalled-check` key, set
with PX 120 s by the first worker's check, even turns later workers' start-up checks into no-ops).
Where a worker has to take the job given back, it is an idle worker whose start-up check could not
move the job anyway (the job is not active when it starts), or one started only once the step has
given the job back; and no worker may report a `stalled` event of its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from remediator.config import Setup, load_setup
from tests.polling import await_until, wait_until
from tests.remediator.kit import SHIPPED, Site, execute
from tests.workers.bullmq_harness import (
    enqueue_sleep,
    job_state,
    key,
    kill,
    lock_key,
    start_producer,
    wait_finished,
    wait_held,
)
from tests.workers.bullmq_workers import Workers, workers_of

QUEUE = "renders"
LOCK_S = 3.0
TIMINGS = {"lock_duration_ms": int(LOCK_S * 1000), "stalled_interval_ms": 120_000}
PLAYBOOK = "bullmq-give-back-stalled-jobs"
LABELS = {"alertname": "TaskmedicStuckTasks", "system": "bullmq", "reason": "stalled"}


def bullmq_setup(site: Site, window: str = "30s") -> Setup:
    """The shipped playbook (its window set), its `bullmq` system on the test's Redis."""
    shipped = (SHIPPED / f"{PLAYBOOK}.yml").read_text()
    assert "window: 60s" in shipped
    systems = f"  bullmq: {{profile: bullmq, redis: '{site.redis_url}'}}\n"
    return load_setup(str(site.write(shipped.replace("window: 60s", f"window: {window}"), systems=systems)))


@pytest.fixture
def workers(site: Site) -> Iterator[Workers]:
    """The test's workers of QUEUE, all SIGKILLed at its end."""
    with workers_of(site.redis_url, QUEUE, **TIMINGS) as started:
        yield started


def orphan(workers: Workers, seconds: float, name: str = "doomed") -> str:
    """A job whose worker was SIGKILLed while running it, its lock expired: stalled by BullMQ's rule."""
    worker, job = workers.start_on_job(name, seconds)
    kill(worker)
    wait_lock_expired(workers.url, job, f"job {job}'s lock to expire")
    return job


def wait_lock_expired(url: str, job: str, what: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        wait_until(lambda: not client.exists(lock_key(QUEUE, job)), LOCK_S + 5, what)
    finally:
        client.close()


def stalled_events(url: str, job: str) -> int:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        entries: Any = client.xrange(key(QUEUE, "events"))
        return sum(1 for _, fields in entries if fields.get("event") == "stalled" and fields.get("jobId") == job)
    finally:
        client.close()


def times_waiting(url: str, job: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        positions: Any = client.lpos(key(QUEUE, "wait"), job, count=0)
        return len(positions or [])
    finally:
        client.close()


def no_stalled_check_of_bullmq(workers: Workers) -> None:
    assert not [e for w in workers.started for e in w.events if e["event"] == "stalled"]


async def test_dead_workers_job_is_given_back_and_run_to_completion_the_live_twins_untouched(
        site: Site, workers: Workers) -> None:
    setup = bullmq_setup(site)
    job = orphan(workers, 4)
    twin = workers.start("twin")
    twin_job = enqueue_sleep(site.redis_url, QUEUE, 300)
    held = wait_held(site.redis_url, QUEUE, twin_job)
    assert held.holder == twin.worker_id

    run = asyncio.create_task(execute(setup, LABELS, playbook=PLAYBOOK))
    # The twin is busy: the job waits, given back, until a fresh worker starts (in a thread, so
    # that the step goes on polling for the pickup meanwhile).
    await await_until(lambda: job_state(site.redis_url, QUEUE, job), 10, "the job given back",
                      done=lambda s: s.in_wait and not s.in_active)
    fresh = await asyncio.to_thread(workers.start, "fresh")
    report = await run

    assert report.outcome == "succeeded", report.error
    step = report.steps[0]
    assert step.rows == 1 and step.detail["dead"] == [job] and step.detail["given_back"] == {QUEUE: [job]}
    done = wait_finished(site.redis_url, QUEUE, job, 15)
    assert done.processed_by == "fresh" and done.stalled_count == 1 and not done.in_active
    assert any(e["event"] == "completed" and e["jobId"] == job for e in fresh.events)
    assert stalled_events(site.redis_url, job) == 1  # the one event taskmedic wrote, as BullMQ would
    twin_now = job_state(site.redis_url, QUEUE, twin_job)
    assert twin_now.in_active and twin_now.holder == twin.worker_id and twin_now.stalled_count == 0
    assert twin_now.processed_on_ms == held.processed_on_ms
    no_stalled_check_of_bullmq(workers)

    again = await execute(setup, LABELS, playbook=PLAYBOOK)
    assert again.outcome == "skipped", again.error


async def test_dry_run_judges_the_dead_job_and_changes_nothing(site: Site, workers: Workers) -> None:
    job = orphan(workers, 300)
    report = await execute(bullmq_setup(site), LABELS, dry_run=True, playbook=PLAYBOOK)
    assert report.outcome == "dry_run", report.error
    assert report.steps[0].rows == 1 and report.steps[0].detail["given_back"] == {QUEUE: [job]}
    state = job_state(site.redis_url, QUEUE, job)
    assert state.in_active and not state.in_wait and state.stalled_count == 0
    assert stalled_events(site.redis_url, job) == 0


async def test_with_no_live_worker_the_step_fails_and_the_job_stays_given_back_once(
        site: Site, workers: Workers) -> None:
    job = orphan(workers, 300)
    setup = bullmq_setup(site, window="2s")
    report = await execute(setup, LABELS, playbook=PLAYBOOK)
    assert report.outcome == "failed"
    assert report.steps[0].outcome == "failed" and "not picked up" in (report.error or "")
    state = job_state(site.redis_url, QUEUE, job)
    assert state.in_wait and not state.in_active and state.stalled_count == 1
    assert times_waiting(site.redis_url, job) == 1

    # nothing is held any more: nothing to give back twice
    again = await execute(setup, LABELS, playbook=PLAYBOOK)
    assert again.outcome == "skipped", again.error
    assert times_waiting(site.redis_url, job) == 1 and job_state(site.redis_url, QUEUE, job).stalled_count == 1
    assert stalled_events(site.redis_url, job) == 1


async def test_a_job_that_already_stalled_once_is_left_for_a_person(site: Site, workers: Workers) -> None:
    """BullMQ's maxStalledCount (1): a job whose worker died under it twice is failed by BullMQ,
    not run again. taskmedic leaves it where it is (refused, `exhausted`)."""
    setup = bullmq_setup(site)
    job = orphan(workers, 300, "first")
    second = workers.start("second")  # idle: it takes the job once given back
    first_run = await execute(setup, LABELS, playbook=PLAYBOOK)
    assert first_run.outcome == "succeeded", first_run.error
    assert wait_held(site.redis_url, QUEUE, job).holder == second.worker_id
    kill(second)
    wait_lock_expired(site.redis_url, job, "the second lock to expire")
    assert job_state(site.redis_url, QUEUE, job).stalled_count == 1

    report = await execute(setup, LABELS, playbook=PLAYBOOK)
    assert report.outcome == "refused", report.error
    step = report.steps[0]
    assert step.outcome == "refused" and step.detail["exhausted"] == [job]
    state = job_state(site.redis_url, QUEUE, job)
    assert state.in_active and not state.in_wait and state.lock_token is None and state.stalled_count == 1
    assert stalled_events(site.redis_url, job) == 1  # the first give-back only
    no_stalled_check_of_bullmq(workers)


async def test_two_runs_at_once_give_the_job_back_once(site: Site, workers: Workers) -> None:
    setup = bullmq_setup(site)
    job = orphan(workers, 300)
    taker = workers.start("taker")  # idle, ready to take it
    started = time.monotonic()
    # Both runs judge the job dead (observed: each one's detail lists it); the WATCH on its lock
    # and the active list makes the later one re-judge, find it no longer held, and write nothing.
    reports = await asyncio.gather(*(execute(setup, LABELS, playbook=PLAYBOOK) for _ in range(2)))
    assert time.monotonic() - started < 30
    assert sorted(r.outcome for r in reports) == ["skipped", "succeeded"], [r.error for r in reports]
    assert sum(r.steps[0].rows for r in reports if r.steps) == 1
    state = wait_held(site.redis_url, QUEUE, job)
    assert state.holder == taker.worker_id and state.stalled_count == 1
    assert stalled_events(site.redis_url, job) == 1 and times_waiting(site.redis_url, job) == 0
    assert [e["jobId"] for e in taker.events if e["event"] == "active"] == [job]
    no_stalled_check_of_bullmq(workers)


async def test_a_busy_queue_does_not_keep_the_give_back_from_happening(site: Site, workers: Workers) -> None:
    """BullMQ keeps every worker's running jobs in one list per queue, `bull:<q>:active`, which
    changes at every take and every finish. The give-back watches the job's own keys (its lock and
    its hash, which every move of the job writes), not that list: on a queue running hundreds of
    jobs a second it still gives the job back, once."""
    setup = bullmq_setup(site)
    producer = None
    client = redis.Redis.from_url(site.redis_url)
    try:
        job = orphan(workers, 300)
        for i in range(2):
            workers.start(f"busy{i}", concurrency=5)
        producer = start_producer(site.redis_url, QUEUE, 100_000)
        done = key(QUEUE, "completed")
        wait_until(lambda: client.zcard(done) > 500, 20, "the busy workers to run instant jobs")
        before = (client.zcard(done), time.monotonic())
        report = await execute(setup, LABELS, playbook=PLAYBOOK)
        rate = (client.zcard(done) - before[0]) / (time.monotonic() - before[1])
        assert rate > 100, f"only {rate:.0f} jobs/s: not busy"
        assert report.outcome == "succeeded", report.error
        state = wait_held(site.redis_url, QUEUE, job)
        assert state.processed_by in ("busy0", "busy1") and state.stalled_count == 1
        assert stalled_events(site.redis_url, job) == 1
        no_stalled_check_of_bullmq(workers)
    finally:
        if producer is not None:
            kill(producer)
        client.close()
