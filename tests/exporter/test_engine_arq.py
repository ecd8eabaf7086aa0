"""The arq profile against real arq 0.28 workers (tests/workers/arq_harness.py).

arq names no worker anywhere: a running job stays in its queue's sorted set, locked by
`arq:in-progress:<id>` (job_timeout + 10 s, never renewed), and the only sign of life is the
queue's shared `<queue>:health-check` key, rewritten by every live worker of the queue each
health_check_interval and deleted by any one that stops gracefully. So the profile can judge a
queue, not a worker: its in-progress jobs are abandoned once that key has stayed missing for
`dead_after` — that is, once every worker of the queue is gone.

Timings: health_check_interval 1 s (the key is rewritten every 1-1.5 s with a 2 s TTL), and
`dead_after: 4s` in the test config (more than the interval plus a poll, as the profile asks).
job_timeout 60 s, so no in-progress key expires while a test watches."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
import redis.asyncio as aioredis

from exporter.collectors import Collector
from exporter.runtime import run_once
from exporter.snapshot import CollectorResult
from taskmedic.config.model import QueueSource
from taskmedic.detection import engine
from tests.exporter.helpers import queue_collector, value
from tests.workers import arq_harness as arq

HEALTH_INTERVAL = 1.0
HEALTH_TTL = HEALTH_INTERVAL + 1  # arq's PSETEX of the health key
DEAD_AFTER = 4.0
JOB_TIMEOUT = 60
EVIDENCE_LIMIT = HEALTH_TTL + DEAD_AFTER  # the longest any of arq's evidence can speak for a dead worker
PAUSE = 0.3  # between cycles


def config(url: str, names: list[str]) -> str:
    return (f"systems:\n  work:\n    profile: arq\n    redis: {url}\n    interval: 1s\n"
            f"    queues:\n      names: {json.dumps(names)}\n"
            f"      engine:\n        heartbeat: {{dead_after: {DEAD_AFTER:g}s}}\n")


def start(redis_url: str, queue: str, log: Path) -> subprocess.Popen[bytes]:
    """One job at a time, so each worker holds exactly the job it took and leaves the next waiting."""
    return arq.start_worker(redis_url, queue, max_jobs=1, job_timeout=JOB_TIMEOUT,
                            health_check_interval=HEALTH_INTERVAL, log_path=log)


@dataclass
class Watch:
    """One exporter collector kept across cycles (it remembers since when a health key is
    missing), and the same judgement read directly, to name the jobs it finds dead."""

    collector: Collector
    source: QueueSource
    client: aioredis.Redis
    absences: engine.Absences

    async def cycle(self) -> tuple[CollectorResult, list[str]]:
        result = await run_once(self.collector)
        assert result.up, result.error
        state = await engine.observe(self.client, self.source, self.absences)
        return result, sorted(h.job for h in state.dead)


@asynccontextmanager
async def watching(tmp: Path, redis_url: str, names: list[str]) -> AsyncIterator[Watch]:
    async with queue_collector(tmp, config(redis_url, names), "work") as (collector, source, client):
        yield Watch(collector, source, client, engine.Absences())


def counts(r: CollectorResult, *queues: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in queues:
        out[f"{q}.depth"] = value(r, "taskmedic_queue_depth", queue=q)
        out[f"{q}.unacked"] = value(r, "taskmedic_queue_unacked", queue=q)
    return out | {"queued": value(r, "taskmedic_tasks", status="queued"),
                  "held": value(r, "taskmedic_tasks", status="held"),
                  "stuck": value(r, "taskmedic_stuck_tasks", status="held", reason="worker_gone"),
                  "trusted": value(r, "taskmedic_judgement_trusted")}


async def test_a_queue_whose_only_worker_was_killed_is_flagged_after_dead_after_and_the_live_queue_never(
        redis_url: str, tmp: Path) -> None:
    """Two queues, one worker each, both on a 300 s job with one more job waiting behind it.
    The `doomed` queue's worker is SIGKILLed: its job stays in the queue under its in-progress
    key, the queue's health key expires (2 s) and, missing for dead_after, condemns the job. The
    `steady` queue's job is never flagged, long after it has outlived every arq timeout that
    evidence has. `doomed` is listed under `names` (its health key, the marker that discovers it,
    dies with its workers); `steady` is discovered by its health key."""
    arq.ensure_installed()
    client = redis.Redis.from_url(redis_url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        doomed = start(redis_url, "doomed", tmp / "doomed.log")
        workers.append(doomed)
        steady = start(redis_url, "steady", tmp / "steady.log")
        workers.append(steady)
        orphan = arq.enqueue_sleep(redis_url, "doomed", 300)
        assert arq.wait_started(redis_url, orphan) == [arq.JobStart(doomed.pid, 1)]
        running = arq.enqueue_sleep(redis_url, "steady", 300)
        assert arq.wait_started(redis_url, running) == [arq.JobStart(steady.pid, 1)]
        running_since = waiting_since = time.monotonic()
        for queue in ("doomed", "steady"):  # each worker is busy: these wait
            arq.enqueue_sleep(redis_url, queue, 1)
        busy = {"doomed.depth": 1, "doomed.unacked": 1, "steady.depth": 1, "steady.unacked": 1,
                "queued": 2, "held": 2, "trusted": 1}

        async with watching(tmp, redis_url, ["doomed"]) as watch:
            for _ in range(3):
                r, dead = await watch.cycle()
                assert (counts(r, "doomed", "steady"), dead) == ({**busy, "stuck": 0}, [])
                time.sleep(PAUSE)
            oldest = value(r, "taskmedic_queue_oldest_age_seconds", queue="steady")
            # the waiting job's age, not the running one's (arq keeps it in the queue, first in line)
            assert oldest is not None and 0 <= oldest <= time.monotonic() - waiting_since

            arq.kill(doomed)
            killed = time.monotonic()
            missing_since = None
            while True:
                present = bool(client.exists(arq.health_check_key("doomed")))
                if not present and missing_since is None:
                    missing_since = time.monotonic()
                r, dead = await watch.cycle()
                if counts(r, "doomed", "steady")["stuck"] == 1:
                    flagged = time.monotonic()
                    break
                assert (counts(r, "doomed", "steady"), dead) == ({**busy, "stuck": 0}, [])
                assert time.monotonic() - killed < EVIDENCE_LIMIT + 3, "the dead queue was never flagged"
                time.sleep(PAUSE)
            assert missing_since is not None and missing_since - killed <= HEALTH_TTL + PAUSE + 0.5
            # as soon as the evidence allows: dead_after after the first cycle that saw the key missing
            assert DEAD_AFTER - 0.2 <= flagged - missing_since <= DEAD_AFTER + 2 * PAUSE + 1
            assert dead == [orphan]

            # The live job outlives every timeout of arq's evidence: still 1 stuck, the orphan.
            cycles = 0
            while cycles < 3 or time.monotonic() - running_since < EVIDENCE_LIMIT + 3:
                r, dead = await watch.cycle()
                assert (counts(r, "doomed", "steady"), dead) == ({**busy, "stuck": 1}, [orphan])
                cycles += 1
                time.sleep(PAUSE)
        assert client.exists(arq.health_check_key("steady")) and not client.exists(arq.health_check_key("doomed"))
        assert arq.job_starts(redis_url, running) == [arq.JobStart(steady.pid, 1)]
        assert arq.job_starts(redis_url, orphan) == [arq.JobStart(doomed.pid, 1)]
        assert not arq.job_finished(redis_url, running)
        assert client.get(arq.in_progress_key(orphan)) == b"1"  # arq itself still holds it, for 70 s
    finally:
        for proc in workers:
            arq.kill(proc)
        client.close()


async def test_a_dead_worker_is_not_told_apart_while_another_worker_of_its_queue_lives(
        redis_url: str, tmp: Path) -> None:
    """One queue, three workers: `doomed` and `live` each on a 300 s job, `leaving` idle. `doomed`
    is SIGKILLed, then `leaving` is stopped gracefully, which deletes the queue's shared health
    key. `live` rewrites that key within its interval (1 s < dead_after), so nothing is flagged:
    the dead worker's job and the live one's look alike (an in-progress key naming no worker), and
    arq's own recovery — the in-progress key expiring job_timeout + 10 s after the start, then a
    live worker of the queue running it again (tests/workers/test_arq_harness.py) — is the only
    one that can give it back. Watched for longer than every timeout of arq's evidence."""
    arq.ensure_installed()
    queue = "shared"
    client = redis.Redis.from_url(redis_url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        doomed = start(redis_url, queue, tmp / "doomed.log")
        workers.append(doomed)
        orphan = arq.enqueue_sleep(redis_url, queue, 300)
        assert arq.wait_started(redis_url, orphan) == [arq.JobStart(doomed.pid, 1)]
        live = start(redis_url, queue, tmp / "live.log")
        workers.append(live)
        running = arq.enqueue_sleep(redis_url, queue, 300)
        assert arq.wait_started(redis_url, running) == [arq.JobStart(live.pid, 1)]
        leaving = start(redis_url, queue, tmp / "leaving.log")
        workers.append(leaving)
        both = {f"{queue}.depth": 0, f"{queue}.unacked": 2, "queued": 0, "held": 2, "stuck": 0, "trusted": 1}

        async with watching(tmp, redis_url, [queue]) as watch:
            arq.kill(doomed)
            killed = time.monotonic()
            arq.stop(leaving)
            while time.monotonic() - killed < EVIDENCE_LIMIT + 3:
                r, dead = await watch.cycle()
                assert (counts(r, queue), dead) == (both, [])
                time.sleep(PAUSE)
        assert leaving.returncode == 0
        assert arq.job_starts(redis_url, orphan) == [arq.JobStart(doomed.pid, 1)]
        assert arq.job_starts(redis_url, running) == [arq.JobStart(live.pid, 1)]
        assert client.get(arq.in_progress_key(orphan)) == b"1"
    finally:
        for proc in workers:
            arq.kill(proc)
        client.close()
