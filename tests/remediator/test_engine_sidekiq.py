"""The shipped sidekiq-capture-expiring-jobs playbook (its `engine` step, the `sidekiq` profile)
against real Sidekiq 6.4 processes (tests/workers/sidekiq_harness.py). A SIGKILLed process's
running job is held only in its `<identity>:workers` hash, which expires 60 s after its last beat,
and Sidekiq OSS never gives it back: the step captures it first, RPUSHes it (the job text byte for
byte) onto `queue:<name>` as Sidekiq's own shutdown requeue does, once, and a new process runs it
to completion."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator

import pytest
import redis

from remediator.config import Setup
from remediator.engine import Report
from tests.polling import wait_until
from tests.remediator.kit import SHIPPED, Site, execute
from tests.workers import sidekiq_harness as sidekiq

QUEUE = "work"
DEAD_AFTER = 12.0  # Sidekiq 6.4 beats every 5 s (fixed); the profile's 15 s, shortened for the test
SHORT_JOB = 8.0  # long enough to be seen held (a beat comes within 5 s) and killed, short enough to run again
LABELS = {"alertname": "TaskmedicHeldWorkExpiring", "system": "sidekiq", "reason": "expiring"}
PLAYBOOK = "sidekiq-capture-expiring-jobs"
Processes = list[subprocess.Popen[bytes]]


def sidekiq_setup(site: Site, window: str = "30s", watch: str = "0s") -> Setup:
    """The shipped playbook (its window and watch set for the test) on a `sidekiq` system with the
    test's dead_after."""
    book = (SHIPPED / f"{PLAYBOOK}.yml").read_text()
    assert "window: 60s" in book and "watch: 15s" in book
    book = book.replace("window: 60s", f"window: {window}").replace("watch: 15s", f"watch: {watch}")
    systems = (f"  sidekiq: {{profile: sidekiq, redis: '{site.redis_url}',\n"
               f"            queues: {{engine: {{heartbeat: {{dead_after: {DEAD_AFTER:g}s}}}}}}}}\n")
    return site.setup(book, systems=systems)


def wait_dead(client: redis.Redis, identity: str) -> None:
    """Wait until the process's last beat is dead_after old by Redis' clock."""
    def age() -> float:
        seconds, micros = client.time()
        return float(seconds) + micros / 1e6 - float(client.hget(identity, "beat") or 0)

    wait_until(age, DEAD_AFTER + 8, f"{identity}'s beat to be {DEAD_AFTER:g}s old",
               done=lambda a: a > DEAD_AFTER + 0.2, interval=0.2)


def start_job(url: str, seconds: float) -> tuple[str, str, str]:
    """Enqueue a SleepJob and wait until some process runs it: (its jid, its text as enqueued, the
    identity of the process running it)."""
    jid, text = sidekiq.sleep_job(QUEUE, seconds)
    sidekiq.enqueue(url, QUEUE, text)
    return jid, text, sidekiq.wait_started(url, jid)


def kill_holding(url: str, proc: subprocess.Popen[bytes], identity: str, jid: str) -> None:
    """SIGKILL the process as soon as its heartbeat shows it holds job `jid`."""
    sidekiq.wait_held(url, identity, jid)
    sidekiq.kill(proc)
    assert not sidekiq.job_finished(url, jid), "killed too late: the job had already finished"


@pytest.fixture
def client(site: Site) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(site.redis_url, decode_responses=True)
    yield r
    r.close()


@pytest.fixture
def workers() -> Iterator[Processes]:
    """The Sidekiq processes a test starts (it adds them here), SIGKILLed at its end."""
    started: Processes = []
    yield started
    for proc in started:
        sidekiq.kill(proc)


def one_killed_holding(url: str, workers: Processes) -> tuple[str, str, str]:
    """One process started, given a SHORT_JOB, and SIGKILLed holding it: (the jid, the job's text,
    the dead process's identity)."""
    workers.extend(sidekiq.start_workers(url, QUEUE, 1))
    jid, text, identity = start_job(url, SHORT_JOB)
    kill_holding(url, workers[0], identity, jid)
    return jid, text, identity


def given_back(report: Report) -> dict[str, list[str]]:
    return dict(report.steps[0].detail.get("given_back", {})) if report.steps else {}


def dead_process_is_gone(client: redis.Redis, identity: str) -> bool:
    return not (client.exists(identity) or client.exists(f"{identity}:workers")
                or client.sismember("processes", identity))


async def test_killed_process_job_is_captured_and_run_to_completion_by_a_new_process(
        site: Site, client: redis.Redis, workers: Processes) -> None:
    setup = sidekiq_setup(site, watch="6s")  # the live twin beats at least once while the step watches
    workers.extend(sidekiq.start_workers(site.redis_url, QUEUE, 2))
    procs = {sidekiq.identity_of(site.redis_url, proc): proc for proc in workers}
    victim_jid, victim_job, victim = start_job(site.redis_url, SHORT_JOB)
    twin_jid, _, twin = start_job(site.redis_url, 300)
    assert {victim, twin} == set(procs)

    kill_holding(site.redis_url, procs[victim], victim, victim_jid)
    sidekiq.wait_held(site.redis_url, twin, twin_jid)
    new = sidekiq.start_worker(site.redis_url, QUEUE)
    workers.append(new)
    newcomer = sidekiq.identity_of(site.redis_url, new)
    wait_dead(client, victim)

    dry = await execute(setup, LABELS, dry_run=True, playbook=PLAYBOOK)
    assert dry.outcome == "dry_run", dry.error
    assert (dry.steps[0].rows, given_back(dry)) == (1, {QUEUE: [victim_jid]})
    assert client.llen(f"queue:{QUEUE}") == 0 and sidekiq.held_jids(site.redis_url, victim) == {victim_jid}
    assert client.sismember("processes", victim) and sidekiq.job_runs(site.redis_url, victim_jid) == 1

    report = await execute(setup, LABELS, playbook=PLAYBOOK)
    assert report.outcome == "succeeded", report.error
    step = report.steps[0]
    assert (step.rows, given_back(report), step.detail["dead"]) == (1, {QUEUE: [victim_jid]}, [victim_jid])
    assert dead_process_is_gone(client, victim)

    # The new process (started after the kill) runs the captured job, as Sidekiq enqueued it.
    assert sidekiq.wait_started(site.redis_url, victim_jid) == newcomer
    wait_until(lambda: client.hvals(f"{newcomer}:workers"), 8, f"{newcomer}'s beat to show the job")
    (work,) = client.hvals(f"{newcomer}:workers")
    assert json.loads(work)["payload"] == victim_job  # byte for byte
    wait_until(lambda: sidekiq.job_finished(site.redis_url, victim_jid), SHORT_JOB + 5,
               f"job {victim_jid} to finish")
    assert sidekiq.job_runs(site.redis_url, victim_jid) == 2  # the crashed run and this one

    # The live twin's long job is untouched.
    assert sidekiq.held_jids(site.redis_url, twin) == {twin_jid} and client.sismember("processes", twin)
    assert sidekiq.job_runs(site.redis_url, twin_jid) == 1 and not sidekiq.job_finished(site.redis_url, twin_jid)

    again = await execute(setup, LABELS, playbook=PLAYBOOK)
    assert again.outcome == "skipped", again.error
    assert client.llen(f"queue:{QUEUE}") == 0 and sidekiq.job_runs(site.redis_url, victim_jid) == 2


async def test_with_no_live_process_the_step_fails_and_the_job_stays_given_back_once(
        site: Site, client: redis.Redis, workers: Processes) -> None:
    setup = sidekiq_setup(site, window="3s")
    jid, job, victim = one_killed_holding(site.redis_url, workers)
    wait_dead(client, victim)

    report = await execute(setup, LABELS, playbook=PLAYBOOK)
    assert report.outcome == "failed"
    assert "not picked up" in (report.error or ""), report.error
    assert given_back(report) == {QUEUE: [jid]}
    assert client.lrange(f"queue:{QUEUE}", 0, -1) == [job]  # once, byte for byte, safe from the expiry
    assert client.sismember("queues", QUEUE) and dead_process_is_gone(client, victim)

    again = await execute(setup, LABELS, playbook=PLAYBOOK)
    assert again.outcome == "skipped", again.error
    assert client.lrange(f"queue:{QUEUE}", 0, -1) == [job]

    workers.append(sidekiq.start_worker(site.redis_url, QUEUE))  # a process comes back: it runs the job
    assert sidekiq.wait_started(site.redis_url, jid) == sidekiq.identity_of(site.redis_url, workers[-1])
    assert client.llen(f"queue:{QUEUE}") == 0


async def test_two_runs_at_once_give_the_job_back_once(
        site: Site, client: redis.Redis, workers: Processes) -> None:
    setup = sidekiq_setup(site)
    jid, _, victim = one_killed_holding(site.redis_url, workers)
    # Two threads: a job given back twice would run twice at once.
    workers.append(sidekiq.start_worker(site.redis_url, QUEUE, concurrency=2))
    wait_dead(client, victim)

    first, second = await asyncio.gather(*(execute(setup, LABELS, playbook=PLAYBOOK) for _ in range(2)))

    assert sorted([first.outcome, second.outcome]) == ["skipped", "succeeded"], (first.error, second.error)
    assert [r.steps[0].detail["dead"] for r in (first, second)] == [[jid], [jid]]  # both judged it dead
    assert [given_back(r) for r in (first, second) if r.outcome == "succeeded"] == [{QUEUE: [jid]}]
    wait_until(lambda: sidekiq.job_finished(site.redis_url, jid), SHORT_JOB + 5, f"job {jid} to finish")
    assert sidekiq.job_runs(site.redis_url, jid) == 2  # the crashed run and one more
    assert client.llen(f"queue:{QUEUE}") == 0 and dead_process_is_gone(client, victim)


async def test_after_the_60s_expiry_nothing_is_left_to_capture(
        site: Site, client: redis.Redis, workers: Processes) -> None:
    setup = sidekiq_setup(site)
    jid, _, victim = one_killed_holding(site.redis_url, workers)
    # What Redis does 60 s after the last beat (PEXPIRE now stands for the passing of that minute).
    client.pexpire(victim, 1)
    client.pexpire(f"{victim}:workers", 1)
    wait_until(lambda: not client.exists(victim, f"{victim}:workers"), 2, f"{victim}'s hashes to expire")

    report = await execute(setup, LABELS, playbook=PLAYBOOK)
    assert report.outcome == "skipped", report.error
    assert report.steps[0].detail["held"] == 0
    assert client.llen(f"queue:{QUEUE}") == 0 and sidekiq.job_runs(site.redis_url, jid) == 1  # the job is lost
    assert client.sismember("processes", victim)  # a stale member, not evidence of anything held


async def test_a_process_that_dies_just_after_the_first_is_captured_by_the_same_run(
        site: Site, client: redis.Redis, workers: Processes) -> None:
    """A lost node: its processes stop beating up to a beat apart, and the one alert, still firing,
    is not delivered again for the second. The shipped `watch: 15s` captures it too."""
    setup = sidekiq_setup(site, watch="15s")
    workers.extend(sidekiq.start_workers(site.redis_url, QUEUE, 2))
    procs = {sidekiq.identity_of(site.redis_url, proc): proc for proc in workers}
    first_jid, _, first = start_job(site.redis_url, SHORT_JOB)
    second_jid, _, second = start_job(site.redis_url, 300)  # still running when its turn to die comes
    workers.append(sidekiq.start_worker(site.redis_url, QUEUE, concurrency=2))  # idle: takes what comes back
    newcomer = sidekiq.identity_of(site.redis_url, workers[-1])
    kill_holding(site.redis_url, procs[first], first, first_jid)
    first_beat = float(client.hget(first, "beat") or 0)
    # The second dies right after a beat at least 2 s later than the first's last one.
    wait_until(lambda: float(client.hget(second, "beat") or 0), 8, f"{second} to beat 2 s after {first}",
               done=lambda beat: beat > first_beat + 2, interval=0.02)
    kill_holding(site.redis_url, procs[second], second, second_jid)
    wait_dead(client, first)

    report = await execute(setup, LABELS, playbook=PLAYBOOK)

    assert report.outcome == "succeeded", report.error
    step = report.steps[0]
    assert step.detail["dead"] == [first_jid]  # when it began, only the first was dead
    assert (step.rows, given_back(report)) == (2, {QUEUE: [first_jid, second_jid]})
    assert sidekiq.job_runner(site.redis_url, second_jid) == newcomer  # taken before the watch ended
    wait_until(lambda: sidekiq.job_finished(site.redis_url, first_jid), SHORT_JOB + 5, f"{first_jid} to finish")
    assert sidekiq.job_runner(site.redis_url, first_jid) == newcomer
    assert [sidekiq.job_runs(site.redis_url, jid) for jid in (first_jid, second_jid)] == [2, 2]
    assert dead_process_is_gone(client, first) and dead_process_is_gone(client, second)
