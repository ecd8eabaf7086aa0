"""A real Dramatiq worker process paused (SIGSTOP: a VM pause, a swap storm, a long GIL-holding
call) for 17 s, far less than Dramatiq's own heartbeat_timeout (60 s, the profile's dead_after),
then resumed (SIGCONT). Dramatiq itself would not requeue its message, and neither does
taskmedic: it runs once. (With dead_after 15 s, as the profile first had, it ran twice.)"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis

from tests.attack.kit import run_step
from tests.polling import wait_until
from tests.remediator.kit import Site
from tests.workers import dramatiq_harness as engine

QUEUE = "paused"


async def test_a_worker_paused_for_17s_does_not_have_its_message_run_twice(site: Site, tmp: Path) -> None:
    url = site.redis_url
    client = redis.Redis.from_url(url)
    with engine.workers(url, QUEUE, 1, log_dir=tmp) as (first,):
        job = engine.enqueue_sleep(url, QUEUE, 8)
        assert engine.wait_started(client, job) == first.broker_id
        os.killpg(first.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(17)  # < Dramatiq's heartbeat_timeout 60 s
            report = await run_step(site, "dramatiq", window="1s")
        finally:
            os.killpg(first.proc.pid, signal.SIGCONT)
        given = report.steps[0].detail.get("given_back", {}) if report.steps else {}
        with engine.workers(url, QUEUE, 1, log_dir=tmp) as (second,):
            wait_until(lambda: engine.finished_by(client, job), 30, "the job to finish")
            time.sleep(10 if given else 0)  # the second worker's run, if it was given back
            runs = engine.finished_by(client, job)
    assert runs == [first.broker_id], (report.outcome, given, runs, second.broker_id)
