"""The `sidekiq` profile against real Sidekiq 6.4 processes (tests/workers/sidekiq_harness.py): a
live process on a long job next to one SIGKILLed mid-job. The killed process's job is out of its
queue, held only in its `<identity>:workers` hash, which expires 60 s after its last beat: it is
`expiring` as soon as that beat is `dead_after` old, and the live twin, beating every 5 s, never is."""

from __future__ import annotations

import time
from pathlib import Path

import redis
import redis.asyncio as aioredis

from exporter.config import ExporterConfig
from exporter.snapshot import CollectorResult
from taskmedic.config import load
from taskmedic.detection import engine
from tests.exporter.helpers import collect_up, held_counts
from tests.workers import sidekiq_harness as sidekiq

QUEUE = "work"
DEAD_AFTER = 12.0  # Sidekiq 6.4 beats every 5 s (fixed); the profile's 15 s, shortened for the test
REASON = "expiring"


def sidekiq_config(url: str) -> str:
    return (f"systems:\n  sidekiq:\n    profile: sidekiq\n    redis: {url}\n"
            f"    queues:\n      engine:\n        heartbeat: {{dead_after: {DEAD_AFTER:g}s}}\n")


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + micros / 1e6


async def observed(url: str, tmp: Path) -> engine.EngineState:
    """The detection core's own view (which job is judged what), on the same config."""
    path = tmp / "observe.yml"
    path.write_text(sidekiq_config(url))
    source = load(ExporterConfig, path, environ={}).systems["sidekiq"].queues
    assert source is not None
    client = aioredis.Redis.from_url(url)
    try:
        return await engine.observe(client, source)
    finally:
        await client.aclose()


async def collected(url: str, tmp: Path) -> CollectorResult:
    return await collect_up(tmp, sidekiq_config(url), "queues:sidekiq")


def counts(r: CollectorResult) -> dict[str, float | None]:
    return held_counts(r, QUEUE, REASON)


async def test_killed_process_job_is_expiring_once_its_beat_is_dead_after_old_and_the_live_twin_never(
        redis_url: str, tmp: Path) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    workers = sidekiq.start_workers(redis_url, QUEUE, 2)
    try:
        procs = {sidekiq.identity_of(redis_url, proc): proc for proc in workers}
        victim_jid = sidekiq.enqueue_sleep(redis_url, QUEUE, 300)
        victim = sidekiq.wait_started(redis_url, victim_jid)
        twin_jid = sidekiq.enqueue_sleep(redis_url, QUEUE, 300)
        twin = sidekiq.wait_started(redis_url, twin_jid)
        assert {victim, twin} == set(procs)
        sidekiq.enqueue_sleep(redis_url, QUEUE, 1)  # both processes (-c 1) are busy: it waits
        sidekiq.wait_held(redis_url, victim, victim_jid)
        sidekiq.wait_held(redis_url, twin, twin_jid)

        both_alive = counts(await collected(redis_url, tmp))
        assert both_alive == {"depth": 1, "unacked": 2, "queued": 1, "held": 2, "stuck": 0, "trusted": 1}

        sidekiq.kill(procs[victim])
        beat = sidekiq.last_beat(redis_url, victim)
        assert beat is not None
        quiet_cycles = flagged_cycles = 0
        deadline = time.monotonic() + DEAD_AFTER + 15
        while flagged_cycles < 3:
            assert time.monotonic() < deadline, "the killed process's job was never flagged"
            before = redis_now(client)
            seen = counts(await collected(redis_url, tmp))
            state = await observed(redis_url, tmp)
            after = redis_now(client)
            # The held work and the waiting job do not change; only the verdict on the victim does.
            assert {k: seen[k] for k in ("depth", "unacked", "queued", "held", "trusted")} == \
                {"depth": 1, "unacked": 2, "queued": 1, "held": 2, "trusted": 1}
            verdicts = {(h.worker, h.job): v for h, v in zip(state.held, state.verdicts, strict=True)}
            assert verdicts[(twin, twin_jid)] == "alive"
            if after - beat <= DEAD_AFTER:  # the whole cycle inside dead_after: not yet
                assert seen["stuck"] == 0 and verdicts[(victim, victim_jid)] == "alive"
                quiet_cycles += 1
            elif before - beat > DEAD_AFTER:  # the whole cycle past it: flagged at once
                assert seen["stuck"] == 1 and verdicts[(victim, victim_jid)] == "dead"
                flagged_cycles += 1
            time.sleep(1.0)
        assert quiet_cycles >= 3  # the kill came at most one 5 s beat after the last beat

        # By now the live twin's job has run longer than dead_after, and its beat keeps it alive.
        (work,) = sidekiq.held_jobs(redis_url, twin).values()
        assert redis_now(client) - work["run_at"] > DEAD_AFTER + 5
        assert sidekiq.job_runs(redis_url, twin_jid) == 1 and not sidekiq.job_finished(redis_url, twin_jid)

        # 60 s after its last beat Redis expires the victim's hashes, and its job with them: nothing
        # is left to flag. (PEXPIRE now is what the passing of that minute does.)
        client.pexpire(victim, 1)
        client.pexpire(f"{victim}:workers", 1)
        time.sleep(0.05)
        assert client.sismember("processes", victim)  # a stale member, until some cleanup SREMs it
        gone = counts(await collected(redis_url, tmp))
        assert gone == {"depth": 1, "unacked": 1, "queued": 1, "held": 1, "stuck": 0, "trusted": 1}
    finally:
        client.close()
        for proc in workers:
            sidekiq.kill(proc)


async def test_sigtermed_process_gives_its_job_back_itself_and_is_never_flagged(redis_url: str, tmp: Path) -> None:
    """Sidekiq's own shutdown (SIGTERM, here -t 2): the unfinished job is RPUSHed back and the
    process leaves `processes`; its `<identity>` hash lingers (quiet) without work to flag."""
    (worker,) = sidekiq.start_workers(redis_url, QUEUE, 1, shutdown_timeout=2)
    try:
        identity = sidekiq.identity_of(redis_url, worker)
        jid, job = sidekiq.sleep_job(QUEUE, 300)
        sidekiq.enqueue(redis_url, QUEUE, job)
        sidekiq.wait_started(redis_url, jid)
        sidekiq.wait_held(redis_url, identity, jid)
        assert counts(await collected(redis_url, tmp))["held"] == 1
        sidekiq.terminate(worker)
        after = counts(await collected(redis_url, tmp))
        assert after == {"depth": 1, "unacked": 0, "queued": 1, "held": 0, "stuck": 0, "trusted": 1}
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        assert client.lrange(f"queue:{QUEUE}", 0, -1) == [job]  # the job as enqueued
        assert client.exists(identity) and not client.sismember("processes", identity)  # the hash stays till its TTL
        client.close()
    finally:
        sidekiq.kill(worker)
