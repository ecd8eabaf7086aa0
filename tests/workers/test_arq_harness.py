"""Real arq workers: where a crashed worker's job stays held, what shows a live worker is alive,
and arq's own recovery (the in-progress key expires; a live worker runs the job again)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.polling import wait_until
from tests.workers import arq_harness as arq

QUEUE = "harness"
JOB_TIMEOUT = 8  # arq holds a job for job_timeout + 10 s: 18 s
HELD_MS = (JOB_TIMEOUT + 10) * 1000


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def start(redis_url: str, log_path: Path) -> subprocess.Popen[bytes]:
    """One job at a time, so each worker holds exactly the job it took."""
    return arq.start_worker(redis_url, QUEUE, max_jobs=1, job_timeout=JOB_TIMEOUT, health_check_interval=1,
                            log_path=log_path)


def assert_held(client: redis.Redis, job_id: str, job_try: int) -> int:
    """The job is still queued (its score is its enqueue time, in ms, already due) and locked by
    its anonymous in-progress key; returns that key's PTTL."""
    score = client.zscore(QUEUE, job_id)
    assert score is not None and score <= time.time() * 1000
    assert client.get(arq.in_progress_key(job_id)) == b"1"
    pttl = client.pttl(arq.in_progress_key(job_id))
    assert 0 < pttl <= HELD_MS
    assert client.get(arq.retry_key(job_id)) == str(job_try).encode()
    assert client.exists(arq.job_key(job_id))
    return pttl


def test_killed_worker_job_stays_held_until_its_in_progress_key_expires(
        redis_url: str, client: redis.Redis, tmp_path: Path) -> None:
    arq.ensure_installed()
    crashing = start(redis_url, tmp_path / "crashing.log")
    live = None
    try:
        orphan = arq.enqueue_sleep(redis_url, QUEUE, 300)
        assert arq.wait_started(redis_url, orphan) == [arq.JobStart(crashing.pid, 1)]
        live = start(redis_url, tmp_path / "live.log")
        running = arq.enqueue_sleep(redis_url, QUEUE, 300)
        assert arq.wait_started(redis_url, running) == [arq.JobStart(live.pid, 1)]

        arq.kill(crashing)
        orphan_pttl = assert_held(client, orphan, job_try=1)
        running_pttl = assert_held(client, running, job_try=1)

        # The live worker rewrites the queue's shared health-check key (TTL interval + 1 s) every
        # interval; nothing renews either job's in-progress key, so both only count down.
        health = arq.health_check_key(QUEUE)
        seen: set[bytes | str] = set()

        def rewritten_twice() -> set[bytes | str]:
            value = client.get(health)
            if value is not None:
                seen.add(value)
            return seen
        wait_until(rewritten_twice, 6, "the live worker to rewrite the health-check key twice",
                   done=lambda values: len(values) >= 3)
        assert 0 < client.pttl(health) <= 2000
        assert 0 < client.pttl(arq.in_progress_key(running)) < running_pttl
        assert 0 < client.pttl(arq.in_progress_key(orphan)) < orphan_pttl
        assert arq.job_starts(redis_url, orphan) == [arq.JobStart(crashing.pid, 1)]

        # arq's own recovery: the live worker's job times out, then the orphan's key expires and
        # the live worker picks the orphan (still first in the queue) up again, as its second try.
        starts = arq.wait_started(redis_url, orphan, times=2, timeout=HELD_MS / 1000 + 5)
        assert starts == [arq.JobStart(crashing.pid, 1), arq.JobStart(live.pid, 2)]
        assert client.get(arq.retry_key(orphan)) == b"2"
        assert client.zscore(QUEUE, running) is None and client.exists(arq.result_key(running))
        assert not arq.job_finished(redis_url, running)
    finally:
        arq.kill(crashing)
        if live is not None:
            arq.kill(live)
