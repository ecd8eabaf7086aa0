"""Real dramatiq workers: where a crashed worker's job stays, and what shows a live one is alive."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from tests.polling import wait_until
from tests.workers import dramatiq_harness as engine

QUEUE = "harness"


def heartbeat(client: redis.Redis, broker_id: str) -> float:
    score = client.zscore(engine.HEARTBEATS, broker_id)
    assert score is not None, f"{broker_id} is not in {engine.HEARTBEATS}"
    return score


def next_heartbeat(client: redis.Redis, broker_id: str, last: float) -> float:
    def moved(score: float) -> bool:
        return score > last

    return wait_until(lambda: heartbeat(client, broker_id), 5, f"{broker_id}'s heartbeat past {last}", done=moved)


def test_killed_workers_job_stays_in_its_acks_set_while_the_live_workers_heartbeat_moves(
        redis_url: str, tmp: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    with engine.workers(redis_url, QUEUE, 2, log_dir=tmp) as (first, second):
        killed_job = engine.enqueue_sleep(redis_url, QUEUE, 300)
        killed_id = engine.wait_started(client, killed_job)
        live_job = engine.enqueue_sleep(redis_url, QUEUE, 300)
        live_id = engine.wait_started(client, live_job)
        assert {killed_id, live_id} == {first.broker_id, second.broker_id}

        engine.kill(first if killed_id == first.broker_id else second)
        frozen = heartbeat(client, killed_id)
        time.sleep(2.5)

        killed_acks = engine.acks_key(killed_id, QUEUE)
        assert client.smembers(killed_acks) == {killed_job.encode()}
        assert client.ttl(killed_acks) == -1
        assert client.hexists(engine.messages_key(QUEUE), killed_job)
        assert client.lrange(engine.queue_key(QUEUE), 0, -1) == []
        assert heartbeat(client, killed_id) == frozen

        assert client.smembers(engine.acks_key(live_id, QUEUE)) == {live_job.encode()}
        assert client.hexists(engine.messages_key(QUEUE), live_job)
        assert engine.finished_by(client, live_job) == []
        score = heartbeat(client, live_id)
        for _ in range(3):
            score = next_heartbeat(client, live_id, score)
        server_ms = client.time()[0] * 1000
        assert abs(score - server_ms) < 5000, "heartbeat scores are Unix milliseconds"
        assert server_ms - frozen > 2000
