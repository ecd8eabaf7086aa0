"""A real Sidekiq 6.4 (Debian's ruby-sidekiq): what Redis shows of a SIGKILLed worker's job and of
a live worker's long job."""

from __future__ import annotations

import redis

from tests.polling import wait_until
from tests.workers import sidekiq_harness as sidekiq

QUEUE = "harness"
HEARTBEAT_TTL_MS = 60_000


def test_killed_sidekiq_worker_job_stays_only_in_its_expiring_workers_hash(redis_url: str) -> None:
    workers = sidekiq.start_workers(redis_url, QUEUE, 2)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        by_identity = {sidekiq.identity_of(redis_url, proc): proc for proc in workers}
        victim_jid, survivor_jid = (sidekiq.enqueue_sleep(redis_url, QUEUE, 300) for _ in workers)
        victim, survivor = sidekiq.wait_started(redis_url, victim_jid), sidekiq.wait_started(redis_url, survivor_jid)
        assert {victim, survivor} == set(by_identity), "each worker runs one of the long jobs"
        sidekiq.wait_held(redis_url, victim, victim_jid)
        sidekiq.wait_held(redis_url, survivor, survivor_jid)

        sidekiq.kill(by_identity[victim])
        victim_beat = sidekiq.last_beat(redis_url, victim)
        victim_ttl = client.pttl(victim)

        # Nothing gives the job back: it is out of the queue, held only by the dead process's records.
        assert client.llen(f"queue:{QUEUE}") == 0
        assert client.sismember("processes", victim)
        (work,) = sidekiq.held_jobs(redis_url, victim).values()
        assert (work["queue"], work["payload"]["jid"], work["payload"]["args"]) == (QUEUE, victim_jid, [300])
        assert 0 < client.pttl(f"{victim}:workers") <= HEARTBEAT_TTL_MS
        assert 0 < victim_ttl <= HEARTBEAT_TTL_MS

        # The live worker's long job is held too, and its heartbeat keeps moving (every 5 s).
        survivor_beat = sidekiq.last_beat(redis_url, survivor) or 0.0
        wait_until(lambda: sidekiq.last_beat(redis_url, survivor) or 0.0, 8, f"{survivor} to beat again",
                   done=lambda beat: beat > survivor_beat)
        assert sidekiq.held_jids(redis_url, survivor) == {survivor_jid}
        assert client.pttl(f"{survivor}:workers") > HEARTBEAT_TTL_MS - 5_000
        assert client.pttl(survivor) > HEARTBEAT_TTL_MS - 5_000

        # ...while the dead one's heartbeat is frozen and its records run down toward expiry.
        assert sidekiq.last_beat(redis_url, victim) == victim_beat
        assert sidekiq.held_jids(redis_url, victim) == {victim_jid}
        assert 0 < client.pttl(victim) < victim_ttl
        assert client.llen(f"queue:{QUEUE}") == 0
        assert not sidekiq.job_finished(redis_url, victim_jid)
    finally:
        client.close()
        for proc in workers:
            sidekiq.kill(proc)
