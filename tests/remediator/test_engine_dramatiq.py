"""The shipped playbook dramatiq-give-back-held-work (an `engine` step, window 30 s here) on real
dramatiq 2.2 workers (tests/workers/dramatiq_harness.py): giving back what a SIGKILLed worker
process held — the message it ran, the one it had prefetched and the delayed one it kept in
memory — the way dramatiq's own maintenance does: each id RPUSHed back onto the queue it was
fetched from (`work`, or the delay queue `work.DQ`), the acks set emptied, the dead worker's beat
removed from `dramatiq:__heartbeats__`.

Timings: dead_after 5 s (a live worker beats every 0.5-1.8 s, even on a long job); the workers'
own heartbeat_timeout 5 s with their maintenance off (`maintenance_chance` 0), so that the given
back work is taskmedic's doing (tests/exporter/test_engine_dramatiq.py says why), except in the
race with that maintenance, where it runs on every call of the rescuing worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from remediator.config import Setup, load_setup
from remediator.engine import Report
from taskmedic.connections import redis_now
from tests.polling import wait_until
from tests.remediator.kit import SHIPPED, Site, execute
from tests.workers import dramatiq_harness as dramatiq

PLAYBOOK = "dramatiq-give-back-held-work"
LABELS = {"alertname": "TaskmedicStuckTasks", "system": "dramatiq", "reason": "worker_gone"}
QUEUE = "work"
DELAYED = dramatiq.delay_queue(QUEUE)
DEAD_AFTER = 5.0
RUN_S = 3.0  # the orphan's own length: killed early in its first run, it ends in its second
DELAY_MS = 3000  # the delayed message's: still in the doomed worker's memory when it is killed
EVERY_CALL = 1_000_000  # maintenance_chance: dramatiq's maintenance on every broker call


def dramatiq_setup(site: Site, window: str = "30s") -> Setup:
    """The shipped playbook (its window set), its `dramatiq` system on the test's Redis with the
    test's dead_after."""
    shipped = (SHIPPED / f"{PLAYBOOK}.yml").read_text()
    assert "window: 60s" in shipped
    systems = (f"  dramatiq: {{profile: dramatiq, redis: '{site.redis_url}',\n"
               f"             queues: {{engine: {{heartbeat: {{dead_after: {DEAD_AFTER:g}s}}}}}}}}\n")
    return load_setup(str(site.write(shipped.replace("window: 60s", f"window: {window}"), systems=systems)))


@pytest.fixture
def pool(site: Site) -> Iterator[dramatiq.Pool]:
    dramatiq.ensure_installed()
    workers = dramatiq.Pool(site.redis_url, QUEUE, site.tmp, heartbeat_timeout_ms=int(DEAD_AFTER * 1000),
                            maintenance_chance=0)
    yield workers
    workers.close()


@dataclass(frozen=True)
class Orphaned:
    """What a SIGKILLed worker left in its acks sets."""

    worker: dramatiq.DramatiqWorker
    running: str  # redis message ids
    prefetched: str
    delayed: dramatiq.Sent | None

    def given_back(self) -> dict[str, list[str]]:
        out = {QUEUE: sorted([self.running, self.prefetched])}
        return out | ({DELAYED: [self.delayed.redis_message_id]} if self.delayed else {})

    def held(self, r: redis.Redis) -> tuple[set[bytes], set[bytes]]:
        return (r.smembers(dramatiq.acks_key(self.worker.broker_id, QUEUE)),
                r.smembers(dramatiq.acks_key(self.worker.broker_id, DELAYED)))


def orphaned(site: Site, pool: dramatiq.Pool, r: redis.Redis, *, delayed: bool = True,
             wait: bool = True) -> Orphaned:
    """A worker (prefetch 2) SIGKILLed early in a RUN_S job, with a second one prefetched and
    (`delayed`) a message delayed by DELAY_MS in memory; returned once its beat is dead_after old
    (`wait`), or at once."""
    doomed = pool.start(prefetch=2)
    running, prefetched = dramatiq.enqueue_sleeps(site.redis_url, QUEUE, RUN_S, 1)
    assert dramatiq.wait_started(r, running) == doomed.broker_id
    later = dramatiq.enqueue_delayed_sleep(site.redis_url, QUEUE, 1, DELAY_MS) if delayed else None
    left = Orphaned(doomed, running, prefetched, later)
    wait_until(lambda: left.held(r), 5, "the doomed worker to hold its messages",
               done=lambda held: held == ({running.encode(), prefetched.encode()},
                                          {later.redis_message_id.encode()} if later else set()))
    dramatiq.kill(doomed)
    assert dramatiq.finished_by(r, running) == []
    if wait:
        wait_beat_age(r, left, DEAD_AFTER + 0.1)
    return left


def wait_beat_age(r: redis.Redis, left: Orphaned, age: float) -> None:
    frozen = r.zscore(dramatiq.HEARTBEATS, left.worker.broker_id)
    assert frozen is not None
    wait_until(lambda: redis_now(r.time()) - frozen / 1000, DEAD_AFTER + 3, f"the dead worker's beat to be {age}s old",
               done=lambda seen: seen > age)


def steady(site: Site, pool: dramatiq.Pool, r: redis.Redis) -> tuple[dramatiq.DramatiqWorker, str]:
    """The live twin, on a 300 s job."""
    live = pool.start()
    running = dramatiq.enqueue_sleep(site.redis_url, QUEUE, 300)
    assert dramatiq.wait_started(r, running) == live.broker_id
    return live, running


def step(report: Report) -> dict[str, object]:
    (record,) = report.steps
    return {"outcome": record.outcome, "rows": record.rows, "given_back": record.detail.get("given_back")}


def wait_finished(r: redis.Redis, left: Orphaned, by: dramatiq.DramatiqWorker) -> None:
    """Every message the dead worker held run to its end by `by`; the running one for the second time."""
    me = by.broker_id
    wait_until(lambda: (dramatiq.finished_by(r, left.running), dramatiq.finished_by(r, left.prefetched)),
               RUN_S + 15, "the given-back messages to run to their end", done=lambda done: done == ([me], [me]))
    assert dramatiq.started_by(r, left.running) == [left.worker.broker_id, me]
    assert dramatiq.started_by(r, left.prefetched) == [me]  # prefetched, never started before
    if left.delayed is not None:
        wait_until(lambda: dramatiq.message_finished_by(r, left.delayed.message_id), 15,  # type: ignore[union-attr]
                   "the given-back delayed message to run once its eta passed", done=lambda done: done == [me])
        assert dramatiq.message_started_by(r, left.delayed.message_id) == [me]


async def test_the_dead_workers_messages_are_given_back_and_run_to_their_end_and_the_live_twins_untouched(
        site: Site, pool: dramatiq.Pool, r: redis.Redis) -> None:
    left = orphaned(site, pool, r)
    live, running = steady(site, pool, r)
    rescuer = pool.start()  # idle: takes what is given back
    setup = dramatiq_setup(site)

    dry = await execute(setup, LABELS, dry_run=True)
    assert dry.outcome == "dry_run", dry.error
    assert step(dry) == {"outcome": "dry_run", "rows": 3, "given_back": left.given_back()}
    assert left.held(r) == ({left.running.encode(), left.prefetched.encode()},
                            {left.delayed.redis_message_id.encode()})  # type: ignore[union-attr]
    assert r.zscore(dramatiq.HEARTBEATS, left.worker.broker_id) is not None
    assert r.llen(dramatiq.queue_key(QUEUE)) == r.llen(dramatiq.queue_key(DELAYED)) == 0

    report = await execute(setup, LABELS)
    assert report.outcome == "succeeded", report.error
    assert step(report) == {"outcome": "ok", "rows": 3, "given_back": left.given_back()}
    # As dramatiq's maintenance leaves a dead worker: no acks left, its beat removed.
    assert left.held(r) == (set(), set())
    assert r.zscore(dramatiq.HEARTBEATS, left.worker.broker_id) is None

    wait_finished(r, left, rescuer)
    assert r.hkeys(dramatiq.messages_key(QUEUE)) == [running.encode()]  # the finished ones were acked
    # The live twin's job was never touched.
    assert r.smembers(dramatiq.acks_key(live.broker_id, QUEUE)) == {running.encode()}
    assert dramatiq.started_by(r, running) == [live.broker_id] and dramatiq.finished_by(r, running) == []

    again = await execute(setup, LABELS)
    assert again.outcome == "skipped", again.error
    assert dramatiq.started_by(r, running) == [live.broker_id]


async def test_with_no_live_worker_the_step_fails_and_the_messages_stay_given_back_once(
        site: Site, pool: dramatiq.Pool, r: redis.Redis) -> None:
    left = orphaned(site, pool, r)
    setup = dramatiq_setup(site, window="2s")

    report = await execute(setup, LABELS)
    assert report.outcome == "failed"
    assert f"{QUEUE}, {DELAYED} was not picked up within 2s" in (report.error or "")
    assert step(report) == {"outcome": "failed", "rows": 0, "given_back": left.given_back()}
    # Given back once: each id once at the tail of the queue it was fetched from, no acks left.
    assert sorted(r.lrange(dramatiq.queue_key(QUEUE), 0, -1)) == sorted([left.running.encode(),
                                                                         left.prefetched.encode()])
    assert r.lrange(dramatiq.queue_key(DELAYED), 0, -1) == [left.delayed.redis_message_id.encode()]  # type: ignore[union-attr]
    assert left.held(r) == (set(), set())

    again = await execute(setup, LABELS)
    assert again.outcome == "skipped", again.error  # nothing is held any more
    assert r.llen(dramatiq.queue_key(QUEUE)) == 2 and r.llen(dramatiq.queue_key(DELAYED)) == 1

    wait_finished(r, left, pool.start())  # a worker that comes back runs each of them, once


async def test_two_runs_at_once_give_the_messages_back_once(
        site: Site, pool: dramatiq.Pool, r: redis.Redis) -> None:
    left = orphaned(site, pool, r, delayed=False)
    rescuer = pool.start()
    setup = dramatiq_setup(site)

    first, second = await asyncio.gather(execute(setup, LABELS), execute(setup, LABELS))
    reports = sorted((first, second), key=lambda rep: rep.outcome)
    assert [rep.outcome for rep in reports] == ["skipped", "succeeded"], [rep.error for rep in reports]
    assert step(reports[1])["given_back"] == left.given_back()
    assert reports[0].steps[0].rows == 0

    wait_finished(r, left, rescuer)
    time.sleep(1.0)  # a second give-back would have shown as another start by now
    assert dramatiq.started_by(r, left.running) == [left.worker.broker_id, rescuer.broker_id]
    assert dramatiq.started_by(r, left.prefetched) == [rescuer.broker_id]


async def test_a_run_racing_dramatiqs_own_maintenance_gives_the_messages_back_once(
        site: Site, pool: dramatiq.Pool, r: redis.Redis) -> None:
    """The rescuer runs dramatiq's maintenance on every broker call (about every second) with a
    heartbeat_timeout equal to dead_after, and the step runs again and again from just before the
    dead worker's beat is dead_after old: both find it dead at about the same time. Whichever acts
    first, each message is given back once (maintenance is one Lua script; the step's MULTI/EXEC
    watches the acks sets and the beat)."""
    left = orphaned(site, pool, r, delayed=False, wait=False)
    rescuer = pool.start(maintenance_chance=EVERY_CALL)
    setup = dramatiq_setup(site)
    wait_beat_age(r, left, DEAD_AFTER - 1)

    outcomes = []
    while left.held(r) != (set(), set()):
        report = await execute(setup, LABELS)
        assert report.outcome in ("succeeded", "skipped"), report.error
        outcomes.append(report.outcome)
    assert outcomes.count("succeeded") <= 1, outcomes
    wait_finished(r, left, rescuer)
    time.sleep(1.0)
    assert dramatiq.started_by(r, left.running) == [left.worker.broker_id, rescuer.broker_id]
    assert dramatiq.started_by(r, left.prefetched) == [rescuer.broker_id]
    assert left.held(r) == (set(), set()) and r.zscore(dramatiq.HEARTBEATS, left.worker.broker_id) is None


async def test_ids_whose_messages_were_purged_are_dropped_not_given_back(
        site: Site, pool: dramatiq.Pool, r: redis.Redis) -> None:
    """After the kill the queue is purged with dramatiq's own `broker.flush`: the dead worker's
    acks still hold three ids whose messages are gone. The step drops them, as dramatiq's
    maintenance does (`push_if_in`), instead of pushing them back: a worker would fetch each as
    None, log "This may be a bug in dramatiq", and hold it in its acks set for as long as it lives."""
    left = orphaned(site, pool, r)
    dramatiq.purge(site.redis_url, QUEUE)
    rescuer = pool.start()
    setup = dramatiq_setup(site)

    report = await execute(setup, LABELS)
    assert report.outcome == "succeeded", report.error
    (record,) = report.steps
    assert (record.rows, record.detail["given_back"], record.detail["dropped"]) == (3, {}, left.given_back())
    assert left.held(r) == (set(), set()) and r.zscore(dramatiq.HEARTBEATS, left.worker.broker_id) is None
    assert r.llen(dramatiq.queue_key(QUEUE)) == r.llen(dramatiq.queue_key(DELAYED)) == 0

    fresh = dramatiq.enqueue_sleep(site.redis_url, QUEUE, 0.1)  # the rescuer works on, holding nothing else
    wait_until(lambda: dramatiq.finished_by(r, fresh), 10, "a new message to run")
    wait_until(lambda: r.smembers(dramatiq.acks_key(rescuer.broker_id, QUEUE)), 5, "the rescuer to ack it",
               done=lambda held: held == set())
    assert r.smembers(dramatiq.acks_key(rescuer.broker_id, DELAYED)) == set()
    assert "Found 'None' message" not in rescuer.log.read_text()
    again = await execute(setup, LABELS)
    assert again.outcome == "skipped", again.error
