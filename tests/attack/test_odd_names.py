"""Queue, worker and job names an engine client may write that are not plain text: bytes that
are not UTF-8, glob and regex specials, braces, newlines, very long names."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from tests.attack.kit import judge, redis_time_ms, run_step
from tests.exporter.helpers import value
from tests.remediator.kit import Site


def seed_bull_job(r: redis.Redis, queue: bytes, job: bytes, locked: bool) -> None:
    ms = redis_time_ms(r)
    r.hset(b"bull:" + queue + b":meta", "opts.maxLenEvents", "10000")
    r.hset(b"bull:" + queue + b":" + job, mapping={"name": "send", "data": "{}", "timestamp": str(ms - 60_000)})
    r.lpush(b"bull:" + queue + b":active", job)
    if locked:
        r.set(b"bull:" + queue + b":" + job + b":lock", "worker-token", px=30_000)


async def test_a_job_id_that_is_not_utf8_and_holds_its_lock_is_not_judged_stalled(site: Site, tmp: Path) -> None:
    """Its lock is read under the id's text with U+FFFD in place of the odd byte: a key that
    does not exist, so a live job would be judged stalled."""
    r = redis.Redis.from_url(site.redis_url)
    seed_bull_job(r, b"mail", b"job-\xff", locked=True)
    result = await judge(tmp, site.redis_url, "bullmq")
    assert result.error is None, result.error
    assert value(result, "taskmedic_stuck_tasks", reason="stalled") == 0


async def test_the_step_never_gives_back_a_locked_job_whose_id_is_not_utf8(site: Site) -> None:
    r = redis.Redis.from_url(site.redis_url)
    seed_bull_job(r, b"mail", b"job-\xff", locked=True)
    before = {k: r.dump(k) for k in r.scan_iter()}
    report = await run_step(site, "bullmq", window="1s")
    assert {k: r.dump(k) for k in r.scan_iter()} == before, (report.outcome, report.error)
    assert report.outcome in ("skipped", "refused"), (report.outcome, report.error)


async def test_the_exporter_says_it_cannot_judge_a_job_id_that_is_not_utf8(site: Site, tmp: Path) -> None:
    r = redis.Redis.from_url(site.redis_url)
    seed_bull_job(r, b"mail", b"job-\xff", locked=False)
    result = await judge(tmp, site.redis_url, "bullmq")
    assert value(result, "taskmedic_stuck_tasks", reason="stalled") == 0
    assert value(result, "taskmedic_judgement_trusted") == 0


ODD_QUEUES = ["a*b", "q[1]", "x?y", "br{ace}", "{{", "new\nline", "back\\slash", "dot.ted.q",
              "é-ünï", "L" * 10_000]


async def test_odd_queue_and_worker_names_are_given_back_into_their_own_queue(site: Site) -> None:
    """A dead Dramatiq worker whose id has dots and specials holds one message on each odd queue;
    a live worker with a similar id holds one on each too. Only the dead one's go back, each
    onto its own queue, and nothing else changes."""
    r = redis.Redis.from_url(site.redis_url)
    ms = redis_time_ms(r)
    dead, live = "dead*[w]", "dead*[w]x"
    r.zadd("dramatiq:__heartbeats__", {dead: ms - 120_000, live: ms + 500})
    for i, q in enumerate(ODD_QUEUES):
        for worker in (dead, live):
            m = f"{worker}-m{i}"
            r.hset(f"dramatiq:{q}.msgs", m, json.dumps({"message_timestamp": ms}))
            r.sadd(f"dramatiq:__acks__.{worker}.{q}", m)
    report = await run_step(site, "dramatiq", window="1s")
    given = report.steps[0].detail["given_back"]  # `failed`: no live worker takes them within the window
    assert sorted(given) == sorted(ODD_QUEUES) and report.outcome == "failed", (report.outcome, report.error)
    for i, q in enumerate(ODD_QUEUES):
        assert r.lrange(f"dramatiq:{q}", 0, -1) == [f"{dead}-m{i}".encode()], q[:20]
        assert r.smembers(f"dramatiq:__acks__.{live}.{q}") == {f"{live}-m{i}".encode()}
        assert not r.exists(f"dramatiq:__acks__.{dead}.{q}")


async def test_the_exporter_reads_and_renders_odd_queue_names(site: Site, tmp: Path) -> None:
    from exporter.snapshot import Snapshot

    r = redis.Redis.from_url(site.redis_url)
    ms = redis_time_ms(r)
    r.zadd("dramatiq:__heartbeats__", {"w": ms - 120_000})
    for i, q in enumerate(ODD_QUEUES):
        r.hset(f"dramatiq:{q}.msgs", f"m{i}", json.dumps({"message_timestamp": ms}))
        r.sadd(f"dramatiq:__acks__.w.{q}", f"m{i}")
    result = await judge(tmp, site.redis_url, "dramatiq")
    assert result.error is None, result.error
    assert value(result, "taskmedic_stuck_tasks", reason="worker_gone") == len(ODD_QUEUES)
    body, _ = Snapshot({"queues:dramatiq": result}).render(None)  # type: ignore[arg-type]
    assert b'queue="new\\nline"' in body and b'queue="back\\\\slash"' in body
