"""A real Dramatiq worker process paused (SIGSTOP: a VM pause, a swap storm, a long GIL-holding
call) for longer than the profile's dead_after (15 s) but far less than Dramatiq's own
heartbeat_timeout (60 s), then resumed (SIGCONT). Dramatiq itself would not have requeued its
message; taskmedic gives it back, a second worker runs it, and the first finishes it too."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from tests.attack.kit import run_step
from tests.polling import wait_until
from tests.remediator.kit import Site
from tests.workers import dramatiq_harness as engine

QUEUE = "paused"


@pytest.mark.xfail(strict=True, reason="dramatiq profile dead_after 15s < Dramatiq's own heartbeat_timeout 60s: "
                                       "a worker paused 20 s has its message run twice")
async def test_a_worker_paused_for_20s_does_not_have_its_message_run_twice(site: Site, tmp: Path) -> None:
    url = site.redis_url
    client = redis.Redis.from_url(url)
    with engine.workers(url, QUEUE, 1, log_dir=tmp) as (first,):
        job = engine.enqueue_sleep(url, QUEUE, 8)
        assert engine.wait_started(client, job) == first.broker_id
        os.killpg(first.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(17)  # > dead_after 15 s, < Dramatiq's heartbeat_timeout 60 s
            report = await run_step(site, "dramatiq", window="1s")
        finally:
            os.killpg(first.proc.pid, signal.SIGCONT)
        given = report.steps[0].detail.get("given_back", {}) if report.steps else {}
        with engine.workers(url, QUEUE, 1, log_dir=tmp) as (second,):
            wait_until(lambda: engine.finished_by(client, job), 30, "the job to finish")
            time.sleep(10 if given else 0)  # the second worker's run, if it was given back
            runs = engine.finished_by(client, job)
    assert runs == [first.broker_id], (report.outcome, given, runs, second.broker_id)
