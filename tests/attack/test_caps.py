"""More held work than the profile's max_held: refused before any write, never a partial view
taken for the whole."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from tests.attack.kit import judge, redis_time_ms, run_step
from tests.exporter.helpers import value
from tests.remediator.kit import Site

DEAD = "dead-worker"


def seed_dead_worker_on(r: redis.Redis, queues: list[str]) -> None:
    ms = redis_time_ms(r)
    r.zadd("dramatiq:__heartbeats__", {DEAD: ms - 120_000})
    for q in queues:
        r.hset(f"dramatiq:{q}.msgs", f"m-{q}", json.dumps({"message_id": f"m-{q}", "message_timestamp": ms}))
        r.sadd(f"dramatiq:__acks__.{DEAD}.{q}", f"m-{q}")


async def test_more_holding_keys_than_max_held_is_refused_before_any_write(site: Site) -> None:
    """A dead worker holds one message on each of three queues; max_held 2. Giving back two and
    dropping its beat would leave the third held by a worker that no longer beats: `unknown`
    for ever, and Dramatiq's own maintenance (which finds dead workers by their beat) never
    requeues it either."""
    r = redis.Redis.from_url(site.redis_url)
    seed_dead_worker_on(r, ["q1", "q2", "q3"])
    report = await run_step(site, "dramatiq", override="{max_held: 2}", window="1s")
    assert report.outcome == "refused", (report.outcome, report.steps[0].detail if report.steps else report.error)
    assert r.zscore("dramatiq:__heartbeats__", DEAD) is not None
    assert sum(r.scard(f"dramatiq:__acks__.{DEAD}.{q}") for q in ("q1", "q2", "q3")) == 3


async def test_the_exporter_does_not_trust_a_partial_view(site: Site, tmp: Path) -> None:
    r = redis.Redis.from_url(site.redis_url)
    seed_dead_worker_on(r, ["q1", "q2", "q3"])
    result = await judge(tmp, site.redis_url, "dramatiq", "{max_held: 2}")
    assert result.error is None, result.error
    assert value(result, "taskmedic_judgement_trusted") == 0 or \
        value(result, "taskmedic_tasks", status="held") == 3
