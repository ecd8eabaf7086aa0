"""Dramatiq keeps every worker's beat in one sorted set, which the step WATCHes to give a dead
worker's work back: on a fleet that beats often, does the step still get through?"""

from __future__ import annotations

import threading
import time

import pytest
import redis

from tests.attack.kit import redis_time_ms, run_step
from tests.attack.test_live_but_late import seed_held
from tests.remediator.kit import Site


def fleet_beating(url: str, workers: int, per_second: float, stop: threading.Event) -> None:
    client = redis.Redis.from_url(url)
    pause = 1.0 / per_second if per_second else 0.0  # 0: as fast as one connection goes
    i = 0
    while not stop.is_set():
        client.zadd("dramatiq:__heartbeats__", {f"live-{i % workers}": int(time.time() * 1000)})
        i += 1
        if pause:
            time.sleep(pause)
    client.close()


@pytest.mark.parametrize("per_second", [
    100.0,  # 100 workers beating once a second
    0.0,  # beating flat out: the shared beats are not WATCHed, so they cannot starve the step
])
async def test_a_dead_workers_work_is_given_back_while_live_workers_beat(site: Site, per_second: float) -> None:
    r = redis.Redis.from_url(site.redis_url)
    r.zadd("dramatiq:__heartbeats__", {"dead": redis_time_ms(r) - 120_000})
    seed_held(r, "dead")
    stop = threading.Event()
    beats = threading.Thread(target=fleet_beating, args=(site.redis_url, 500, per_second, stop), daemon=True)
    beats.start()
    try:
        report = await run_step(site, "dramatiq", window="1s")
    finally:
        stop.set()
        beats.join()
    assert "kept changing" not in (report.error or ""), report.error
    assert r.lrange("dramatiq:default", 0, -1) == [b"m-1"]
