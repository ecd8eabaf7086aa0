"""The bullmq profile against real BullMQ 6.7 workers (tests/workers/bullmq_harness.py): a live
worker on a long job next to a SIGKILLed one. The dead worker's job stays in `bull:<q>:active`
under its lock until the lock's PX expiry; from then on it is `stalled`, at the first cycle. The
live worker's job, its lock renewed every ~lockDuration/4, is never flagged however long it runs.

Timings: lockDuration 3 s (the profile has no timing key to match: the lock's expiry is Redis'
own, set by BullMQ). stalledInterval 120 s, so that BullMQ's own stalled checker (which runs in
the live worker) does not give the dead job back while the test watches it."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from exporter.config import ExporterConfig
from exporter.snapshot import CollectorResult
from taskmedic.config import load
from taskmedic.connections import Connections
from taskmedic.detection import engine
from tests.exporter.helpers import collect_up, held_counts, value
from tests.workers.bullmq_harness import enqueue_sleep, job_state, kill, lock_key
from tests.workers.bullmq_workers import workers_of

QUEUE = "renders"
LOCK_S = 3.0
TIMINGS = {"lock_duration_ms": int(LOCK_S * 1000), "stalled_interval_ms": 120_000}
COLLECTOR = "queues:bq"


def config(url: str) -> str:
    return f"systems:\n  bq:\n    profile: bullmq\n    redis: {url}\n    interval: 1s\n"


async def cycle(tmp: Path, url: str) -> CollectorResult:
    return await collect_up(tmp, config(url), COLLECTOR)


def counts(r: CollectorResult) -> dict[str, float | None]:
    return held_counts(r, QUEUE, "stalled")


async def dead_jobs(tmp: Path, url: str) -> list[str]:
    """The held jobs judged dead, by the exporter's own code (which job, not just how many)."""
    path = tmp / "judge.yml"
    path.write_text(config(url))
    system = load(ExporterConfig, path, environ={}).systems["bq"]
    assert system.queues is not None and system.redis is not None
    connections = Connections("taskmedic-tests")
    try:
        state = await engine.observe(connections.redis(system.redis), system.queues)
    finally:
        await connections.close()
    return [h.job for h in state.dead]


async def test_killed_workers_job_is_stalled_once_its_lock_expires_and_the_live_twins_never(
        redis_url: str, tmp: Path) -> None:
    with workers_of(redis_url, QUEUE, **TIMINGS) as workers, \
            redis.Redis.from_url(redis_url, decode_responses=True) as client:
        doomed, doomed_job = workers.start_on_job("doomed", 300)
        live, live_job = workers.start_on_job("live", 300)
        live_started = time.monotonic()
        waiting_job = enqueue_sleep(redis_url, QUEUE, 1)  # both workers busy: it waits
        both_busy = {"depth": 1, "unacked": 2, "queued": 1, "held": 2}

        # Both alive, for longer than the lock lives: every cycle 0 stuck.
        while time.monotonic() - live_started < LOCK_S + 1.5:
            r = await cycle(tmp, redis_url)
            assert counts(r) == {**both_busy, "stuck": 0, "trusted": 1}
            time.sleep(0.3)
        age = value(r, "taskmedic_queue_oldest_age_seconds", queue=QUEUE)
        assert age is not None and 0 <= age < 30  # the waiting job's `timestamp`

        left = job_state(redis_url, QUEUE, doomed_job).lock_ttl_ms
        kill(doomed)
        killed = time.monotonic()
        assert left is not None

        # The lock outlives its holder by what was left of its PX; not stalled while it exists,
        # stalled at the first cycle that reads it missing.
        expired_at = None
        cycles_locked = 0
        while True:
            locked_before = bool(client.exists(lock_key(QUEUE, doomed_job)))
            if not locked_before and expired_at is None:
                expired_at = time.monotonic()
            r = await cycle(tmp, redis_url)
            locked_after = bool(client.exists(lock_key(QUEUE, doomed_job)))
            if locked_before and locked_after:
                assert counts(r) == {**both_busy, "stuck": 0, "trusted": 1}
                cycles_locked += 1
            if not locked_before and not locked_after:
                assert counts(r) == {**both_busy, "stuck": 1, "trusted": 1}
                break
            assert time.monotonic() - killed < left / 1000 + 5, "the dead worker's lock never expired"
            time.sleep(0.1)
        assert expired_at is not None and cycles_locked >= 2
        flagged_after = time.monotonic() - expired_at
        assert flagged_after < 1.0, f"flagged {flagged_after:.2f}s after the lock expired"
        assert time.monotonic() - killed < left / 1000 + 1.5

        # The dead job only; the live twin's, now running well past lockDuration, never.
        end = time.monotonic() + 3
        while time.monotonic() < end:
            assert await dead_jobs(tmp, redis_url) == [doomed_job]
            r = await cycle(tmp, redis_url)
            assert counts(r) == {**both_busy, "stuck": 1, "trusted": 1}
            time.sleep(0.3)
        still = job_state(redis_url, QUEUE, live_job)
        assert still.in_active and still.holder == live.worker_id
        orphan = job_state(redis_url, QUEUE, doomed_job)
        assert orphan.in_active and orphan.lock_token is None and orphan.stalled_count == 0
        assert job_state(redis_url, QUEUE, waiting_job).in_wait
        assert not any(e["event"] == "stalled" for e in live.events)  # BullMQ's own checker did not act
