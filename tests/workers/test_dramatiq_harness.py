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


def test_killed_workers_job_stays_in_its_acks_set_while_the_live_workers_heartbeat_moves(
        redis_url: str, tmp: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    with engine.workers(redis_url, QUEUE, 2, log_dir=tmp) as (first, second):
        first_job = engine.enqueue_sleep(redis_url, QUEUE, 300)
        first_runner = engine.wait_started(client, first_job)
        second_job = engine.enqueue_sleep(redis_url, QUEUE, 300)
        second_runner = engine.wait_started(client, second_job)
        assert {first_runner, second_runner} == {first.broker_id, second.broker_id}
        killed, live = (first, second) if first_runner == first.broker_id else (second, first)
        killed_job, live_job = (first_job, second_job) if killed is first else (second_job, first_job)

        engine.kill(killed)
        frozen = heartbeat(client, killed.broker_id)
        live_before = heartbeat(client, live.broker_id)
        time.sleep(2.5)

        assert client.smembers(engine.acks_key(killed.broker_id, QUEUE)) == {killed_job.encode()}
        assert client.hexists(engine.messages_key(QUEUE), killed_job)
        assert client.lrange(engine.queue_key(QUEUE), 0, -1) == []
        assert heartbeat(client, killed.broker_id) == frozen
        assert client.ttl(engine.acks_key(killed.broker_id, QUEUE)) == -1

        assert client.smembers(engine.acks_key(live.broker_id, QUEUE)) == {live_job.encode()}
        assert client.hexists(engine.messages_key(QUEUE), live_job)
        assert engine.finished_by(client, live_job) == []
        live_after = wait_until(lambda: heartbeat(client, live.broker_id), 5, "the live worker's heartbeat to move",
                                done=lambda score: score > live_before)
        server_ms = client.time()[0] * 1000
        assert abs(live_after - server_ms) < 5000, "heartbeat scores are Unix milliseconds"
        assert server_ms - frozen > 2000
