"""The dramatiq profile against real dramatiq 2.2 workers (tests/workers/dramatiq_harness.py).

A dramatiq worker process holds every message it fetched — the one it runs, those it prefetched,
and the delayed ones it keeps in memory until their eta — in its acks sets
`dramatiq:__acks__.<broker id>.<queue>` (and `.<queue>.DQ`), and beats on every broker call, about
once a second even on a long job, in `dramatiq:__heartbeats__`. A SIGKILLed worker's acks stay,
its beat freezes: all it held is flagged once the beat is `dead_after` old, and a live worker's
work never, however long it runs.

Timings: the profile's dead_after is 5 s here (the beat moves every 0.5-1.8 s). The workers'
heartbeat_timeout, dramatiq's own death rule, is 5 s too, so the live job runs longer than any
timeout dramatiq's evidence has; their maintenance (dramatiq's own recovery, which would give the
dead worker's acks back after that timeout) is off, `maintenance_chance` 0, so that what is
watched is the dead worker's evidence as it stays."""

from __future__ import annotations

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
from taskmedic.connections import redis_now
from taskmedic.detection import engine
from tests.exporter.helpers import queue_collector, value
from tests.polling import wait_until
from tests.workers import dramatiq_harness as dramatiq

QUEUE = "work"
DELAYED = dramatiq.delay_queue(QUEUE)
DEAD_AFTER = 5.0
HEARTBEAT_TIMEOUT_MS = 5000  # dramatiq's own: its maintenance (off here) would call a worker dead then
PAUSE = 0.3  # between cycles
LATER_MS = 300_000  # a delayed message's delay: held in memory by a worker's delay-queue consumer


def config(url: str) -> str:
    return (f"systems:\n  work:\n    profile: dramatiq\n    redis: {url}\n    interval: 1s\n"
            f"    queues:\n      engine:\n        heartbeat: {{dead_after: {DEAD_AFTER:g}s}}\n")


@dataclass
class Watch:
    """One exporter collector, and the same judgement read directly, to name the jobs it finds dead."""

    collector: Collector
    source: QueueSource
    client: aioredis.Redis

    async def cycle(self) -> tuple[CollectorResult, list[str]]:
        result = await run_once(self.collector)
        assert result.up, result.error
        state = await engine.observe(self.client, self.source)
        return result, sorted(h.job for h in state.dead)

    async def now(self) -> float:
        return redis_now(await self.client.time())


@asynccontextmanager
async def watching(tmp: Path, redis_url: str) -> AsyncIterator[Watch]:
    async with queue_collector(tmp, config(redis_url), "work") as (collector, source, client):
        yield Watch(collector, source, client)


def counts(r: CollectorResult) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in (QUEUE, DELAYED):
        out[f"{q}.depth"] = value(r, "taskmedic_queue_depth", queue=q)
        out[f"{q}.unacked"] = value(r, "taskmedic_queue_unacked", queue=q)
    queues = {dict(s.labels).get("queue") for s in r.samples} - {None}
    return out | {"queues": len(queues),  # never the dead letters' `work.XQ`
                  "queued": value(r, "taskmedic_tasks", status="queued"),
                  "held": value(r, "taskmedic_tasks", status="held"),
                  "stuck": value(r, "taskmedic_stuck_tasks", status="held", reason="worker_gone"),
                  "trusted": value(r, "taskmedic_judgement_trusted")}


def beat(client: redis.Redis, worker: dramatiq.DramatiqWorker) -> float:
    score = client.zscore(dramatiq.HEARTBEATS, worker.broker_id)
    assert score is not None
    return score / 1000


async def test_a_killed_workers_running_prefetched_and_delayed_messages_are_flagged_and_the_live_twins_never(
        redis_url: str, tmp: Path) -> None:
    """`doomed` (prefetch 2) runs a 300 s job, holds a second one prefetched and a delayed one in
    memory; `live` (prefetch 1) runs a 300 s job; a third job waits, both being full; a dead
    letter sits in `work.XQ`. Both alive: nothing stuck for a few cycles and until the live job
    has run longer than dead_after (and dramatiq's heartbeat timeout). `doomed` SIGKILLed: its
    three messages are flagged at the first cycle after its beat is dead_after old, not one
    before. `live` then takes a delayed message too; neither of its messages is ever flagged."""
    client = redis.Redis.from_url(redis_url)
    pool = dramatiq.Pool(redis_url, QUEUE, tmp, heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS, maintenance_chance=0)
    try:
        doomed = pool.start(prefetch=2)
        dead_letter = dramatiq.enqueue_failure(redis_url, QUEUE)
        wait_until(lambda: client.zscore(dramatiq.dead_letters_key(QUEUE), dead_letter), 10, "a dead letter")
        orphan, prefetched = dramatiq.enqueue_sleeps(redis_url, QUEUE, 300, 1)
        assert dramatiq.wait_started(client, orphan) == doomed.broker_id
        delayed = dramatiq.enqueue_delayed_sleep(redis_url, QUEUE, 1, LATER_MS).redis_message_id
        wait_until(lambda: (client.smembers(dramatiq.acks_key(doomed.broker_id, QUEUE)),
                            client.smembers(dramatiq.acks_key(doomed.broker_id, DELAYED))), 10,
                   "doomed to hold its running, prefetched and delayed messages",
                   done=lambda held: held == ({orphan.encode(), prefetched.encode()}, {delayed.encode()}))
        live = pool.start()
        running = dramatiq.enqueue_sleep(redis_url, QUEUE, 300)
        assert dramatiq.wait_started(client, running) == live.broker_id
        running_since = time.monotonic()
        waiting = dramatiq.enqueue_sleep(redis_url, QUEUE, 1)
        waiting_since = time.monotonic()
        busy = {f"{QUEUE}.depth": 1, f"{QUEUE}.unacked": 3, f"{DELAYED}.depth": 0, f"{DELAYED}.unacked": 1,
                "queues": 2, "queued": 1, "held": 4, "trusted": 1}

        async with watching(tmp, redis_url) as watch:
            cycles = 0
            while cycles < 3 or time.monotonic() - running_since < DEAD_AFTER + 2:
                r, dead = await watch.cycle()
                assert (counts(r), dead) == ({**busy, "stuck": 0}, [])
                cycles += 1
                time.sleep(PAUSE)
            oldest = value(r, "taskmedic_queue_oldest_age_seconds", queue=QUEUE)
            assert oldest is not None and 0 <= oldest <= time.monotonic() - waiting_since + 1  # the waiting job's

            dramatiq.kill(doomed)
            killed = time.monotonic()
            frozen = beat(client, doomed)
            while True:
                before = await watch.now()
                r, dead = await watch.cycle()
                if counts(r)["stuck"]:
                    break
                assert (counts(r), dead) == ({**busy, "stuck": 0}, [])
                # as soon as the evidence allows: no cycle that began with the beat dead_after old missed it
                assert before - frozen <= DEAD_AFTER, "a dead worker's beat was old enough, yet not flagged"
                assert time.monotonic() - killed < DEAD_AFTER + 5, "the dead worker was never flagged"
                time.sleep(PAUSE)
            assert await watch.now() - frozen > DEAD_AFTER
            orphans = sorted([orphan, prefetched, delayed])
            assert (counts(r), dead) == ({**busy, "stuck": 3}, orphans)

            live_delayed = dramatiq.enqueue_delayed_sleep(redis_url, QUEUE, 1, LATER_MS).redis_message_id
            wait_until(lambda: client.sismember(dramatiq.acks_key(live.broker_id, DELAYED), live_delayed), 10,
                       "the live worker to hold a delayed message")
            live_beat, watched_since = beat(client, live), time.monotonic()
            while time.monotonic() - watched_since < DEAD_AFTER + 2:
                r, dead = await watch.cycle()
                assert (counts(r), dead) == ({**busy, f"{DELAYED}.unacked": 2, "held": 5, "stuck": 3}, orphans)
                time.sleep(PAUSE)
            assert beat(client, live) > live_beat + DEAD_AFTER  # it kept beating on its long job

        # The exporter only read: the dead worker's acks are as it left them, the live job runs on.
        assert client.smembers(dramatiq.acks_key(doomed.broker_id, QUEUE)) == {orphan.encode(), prefetched.encode()}
        assert client.smembers(dramatiq.acks_key(doomed.broker_id, DELAYED)) == {delayed.encode()}
        assert beat(client, doomed) == frozen
        assert client.smembers(dramatiq.acks_key(live.broker_id, QUEUE)) == {running.encode()}
        assert dramatiq.started_by(client, running) == [live.broker_id]
        assert dramatiq.finished_by(client, running) == []
        assert client.lrange(dramatiq.queue_key(QUEUE), 0, -1) == [waiting.encode()]
        assert client.zscore(dramatiq.dead_letters_key(QUEUE), dead_letter) is not None
    finally:
        pool.close()
        client.close()
