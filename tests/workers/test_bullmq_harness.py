"""BullMQ as taskmedic will meet it: a worker SIGKILLed mid-job leaves the job in `bull:<q>:active`
under its lock until the lock expires, while a live worker on a long job keeps renewing its lock;
then the live worker's stalled checker gives the dead worker's job back to the consume end of wait."""

from __future__ import annotations

import itertools
import time

import redis

from tests.polling import wait_until
from tests.workers.bullmq_harness import JobState, job_state, key, kill, worker_connection_name
from tests.workers.bullmq_workers import workers_of

QUEUE = "renders"
# Short enough for a quick test, long enough that a loaded machine does not stall a live job:
# the lock is renewed about every lockDuration / 4 (0.75 s), each time back to 3 s.
FAST = {"lock_duration_ms": 3000, "stalled_interval_ms": 1000}


def lock_ttls(redis_url: str, job_id: str, seconds: float) -> list[JobState]:
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(job_state(redis_url, QUEUE, job_id))
        time.sleep(0.25)
    return samples


def test_killed_worker_leaves_its_job_active_and_locked_until_expiry_while_a_live_worker_renews_its_lock(
        redis_url: str) -> None:
    with workers_of(redis_url, QUEUE, **FAST) as workers, \
            redis.Redis.from_url(redis_url, decode_responses=True) as client:
        doomed, doomed_job = workers.start_on_job("doomed", 300)
        live, live_job = workers.start_on_job("live", 300)

        kill(doomed)
        killed = time.monotonic()
        # The dead worker's connection is gone at once; its job is not: still active, still under its lock.
        names = {entry.get("name") for entry in client.client_list()}
        assert worker_connection_name(QUEUE, "doomed") not in names
        assert worker_connection_name(QUEUE, "live") in names
        orphan = job_state(redis_url, QUEUE, doomed_job)
        assert orphan.in_active and orphan.holder == doomed.worker_id and orphan.processed_by == "doomed"

        # Meanwhile the live worker's lock is renewed: its TTL climbs back up, its token unchanged.
        samples = lock_ttls(redis_url, live_job, 3.5)
        assert all(s.in_active and s.holder == live.worker_id for s in samples)
        ttls = [s.lock_ttl_ms or 0 for s in samples]
        assert any(later > earlier for earlier, later in itertools.pairwise(ttls)), ttls

        # The dead worker's lock expires unrenewed; the live worker's stalled checker then RPUSHes the
        # job to wait, the end BullMQ consumes from (the live worker is busy, so it stays there).
        recovered = wait_until(lambda: job_state(redis_url, QUEUE, doomed_job), 15, "the stalled job back in wait",
                               done=lambda s: s.in_wait)
        recovery = time.monotonic() - killed
        assert not recovered.in_active and recovered.lock_token is None and recovered.stalled_count == 1
        assert client.lindex(key(QUEUE, "wait"), -1) == doomed_job
        assert any(e["event"] == "stalled" and e["jobId"] == doomed_job for e in live.events)
        assert job_state(redis_url, QUEUE, live_job).holder == live.worker_id
        assert recovery < 3 + 2 + 3  # lock duration + two stalled checks + slack
