"""Holders that live but look late: a worker whose clock is behind Redis' clock, a worker whose
beat resumes. A live worker's work must never be given back (a second worker would run it while
the first still does)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from tests.attack.kit import redis_time_ms, run_step
from tests.remediator.kit import Site

LIVE = "live-worker-behind"


@contextmanager
def beating(url: str, worker: str, behind_ms: int, every: float = 0.3) -> Iterator[None]:
    """What a live Dramatiq worker process does about every second: ZADD its beat, by its own
    clock — here `behind_ms` behind Redis' clock."""
    stop = threading.Event()
    client = redis.Redis.from_url(url)

    def beat() -> None:
        while not stop.is_set():
            client.zadd("dramatiq:__heartbeats__", {worker: int(time.time() * 1000) - behind_ms})
            stop.wait(every)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        client.close()


def seed_held(r: redis.Redis, worker: str, message: str = "m-1", queue: str = "default") -> None:
    ms = redis_time_ms(r)
    r.hset(f"dramatiq:{queue}.msgs", message, json.dumps({"message_id": message, "message_timestamp": ms}))
    r.sadd(f"dramatiq:__acks__.{worker}.{queue}", message)


async def test_a_beating_worker_whose_clock_is_behind_keeps_its_work(site: Site) -> None:
    r = redis.Redis.from_url(site.redis_url)
    seed_held(r, LIVE)
    with beating(site.redis_url, LIVE, behind_ms=20_000):  # within dead_after (60 s, Dramatiq's own)
        time.sleep(0.5)
        report = await run_step(site, "dramatiq", window="1s")
    assert r.smembers(f"dramatiq:__acks__.{LIVE}.default") == {b"m-1"}, (report.outcome, report.steps[0].detail)
    assert r.llen("dramatiq:default") == 0


async def test_a_beating_sidekiq_process_whose_clock_is_behind_keeps_its_jobs(site: Site) -> None:
    r = redis.Redis.from_url(site.redis_url)
    identity = "host-c:333:behind"
    job = json.dumps({"class": "HardJob", "args": [], "jid": "jid-1", "queue": "default"})
    r.sadd("processes", identity)
    r.hset(f"{identity}:workers", "tid-1", json.dumps({"queue": "default", "payload": job}))
    stop = threading.Event()

    def beat() -> None:  # what Sidekiq's heartbeat does every 5 s (here faster), by a clock 20 s behind
        client = redis.Redis.from_url(site.redis_url)
        while not stop.is_set():
            client.hset(identity, "beat", str(time.time() - 20))
            client.expire(identity, 60)
            client.expire(f"{identity}:workers", 60)
            stop.wait(0.5)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        report = await run_step(site, "sidekiq", window="1s")
    finally:
        stop.set()
        thread.join()
    assert r.hexists(f"{identity}:workers", "tid-1"), (report.outcome, report.steps[0].detail)
    assert r.llen("queue:default") == 0
