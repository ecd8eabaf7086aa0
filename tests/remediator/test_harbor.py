"""Harbor's 52-hour shape healed the way gocraft's reaper would, through the shipped playbook: the
dead pool's lock released, the queued sweeps run by a real gocraft-style pool, the live 13 h
replication untouched; and `failed`, never `succeeded`, while the queue stays blocked."""

from __future__ import annotations

import time

import redis

from deploy.local.harbor_shape import P, seed_52_hour_shape, start_pool, wait_for_heartbeat
from remediator.config import Setup, load_setup
from tests.remediator.kit import Site, execute
from tests.remediator.test_shipped_playbooks import SHIPPED

PLAYBOOK = "harbor-settle-dangling-executions"
LABELS = {"alertname": "TaskmedicStuckTasks", "system": "harbor", "reason": "worker_gone"}


def shipped_harbor(site: Site, window: str = "60s") -> Setup:
    """The shipped Harbor playbook, its `harbor` system (the harbor profile) on the test's database."""
    book = (SHIPPED / f"{PLAYBOOK}.yml").read_text().replace("window: 60s", f"window: {window}")
    systems = f"  harbor: {{profile: harbor, database: '{site.cape.dsn}', redis: '{site.redis_url}'}}\n"
    return load_setup(str(site.write(book, systems=systems)))


def done(r: redis.Redis) -> list[str]:
    return [j.decode() for j in r.lrange(P + "test:done", 0, -1)]


async def test_dead_pool_holding_the_sweep_lock_is_reaped_and_the_queued_sweeps_run(
        site: Site) -> None:
    r = redis.Redis.from_url(site.redis_url)
    site.cape.load("harbor.sql")  # the `harbor` system's database
    seed_52_hour_shape(site.cape.sql, r)
    setup = shipped_harbor(site)
    pool = start_pool(site.redis_url)
    try:
        wait_for_heartbeat(r)
        time.sleep(1.0)
        assert done(r) == [] and r.llen(P + "jobs:EXECUTION_SWEEP") == 3  # blocked by the dead pool's lock

        report = await execute(setup, LABELS, playbook=PLAYBOOK)

        assert report.outcome == "succeeded", report.error
        assert report.targets is not None and [t["job_ids"] for t in report.targets.rows] == [["sweep-0"]]
        assert report.verify == 0  # `verify: targets`: the rule no longer finds execution 1
        step = report.steps[0].detail
        assert (step["executions"], step["jobs"], step["dead_pools"]) == ([1], ["sweep-0"], ["dead-pool"])
        assert (step["dropped"], step["requeued"]) == ({"EXECUTION_SWEEP": ["sweep-0"]}, {})
        assert step["locks_released"] == {"EXECUTION_SWEEP": 1} and step["queues_moved"] == ["EXECUTION_SWEEP"]
        deadline = time.monotonic() + 15
        while len(done(r)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert done(r) == ["sweep-1", "sweep-2", "sweep-3"]  # oldest first, one at a time
    finally:
        pool.kill()
        pool.wait()
    assert site.cape.sql("select id, status from execution where status <> 'Pending' order by id").splitlines() == \
        ["1|Error", "5|Running"]
    assert site.cape.sql("select job_id, status, status_code, end_time is not null from task "
                         "where job_id in ('sweep-0', 'rep-1') order by id").splitlines() == \
        ["sweep-0|Error|3|t", "rep-1|Running|2|f"]
    assert "lost this job" in site.cape.sql("select status_message from execution where id = 1")
    # the dead pool is gone, with its lock share; the live pool, its replication and its lock stay
    assert r.smembers(P + "worker_pools") == {b"live-pool"} and not r.exists(P + "worker_pools:dead-pool")
    assert r.hgetall(P + "jobs:EXECUTION_SWEEP:lock_info").get(b"dead-pool") is None
    assert r.get(P + "jobs:REPLICATION:lock") == b"1" and r.hgetall(P + "jobs:REPLICATION:lock_info") == \
        {b"live-pool": b"1"}
    assert [b'"rep-1"' in j for j in r.lrange(P + "jobs:REPLICATION:live-pool:inprogress", 0, -1)] == [True]
    assert r.hget(P + "job_stats:rep-1", "status") == b"Running" and not r.exists(P + "job_stats:sweep-0")
    assert r.hkeys(P + "job_track:inprogress") == [b"rep-1"]

    again = await execute(setup, LABELS, playbook=PLAYBOOK)
    assert again.outcome == "skipped" and again.steps == []  # the rule finds nothing left


async def test_reap_without_a_live_pool_to_take_the_sweeps_fails_and_settles_nothing(
        site: Site) -> None:
    r = redis.Redis.from_url(site.redis_url)
    site.cape.load("harbor.sql")
    seed_52_hour_shape(site.cape.sql, r)
    r.hset(P + "worker_pools:live-pool", mapping={"heartbeat_at": int(time.time()) + 600,  # alive, never fetches
                                                  "job_names": "REPLICATION"})
    r.sadd(P + "worker_pools", "live-pool")
    setup = shipped_harbor(site, window="2s")
    report = await execute(setup, LABELS, playbook=PLAYBOOK)
    assert report.outcome == "failed"
    assert "did not move" in (report.error or "") and "sweep-1" in (report.error or "")
    assert r.get(P + "jobs:EXECUTION_SWEEP:lock") == b"0"  # the lock was released: the reap stays
    assert site.cape.sql("select status from execution where id = 1") == "Running"  # rolled back
    assert site.cape.sql("select status from execution where id = 5") == "Running"


async def test_dry_run_judges_and_changes_nothing(site: Site) -> None:
    r = redis.Redis.from_url(site.redis_url)
    site.cape.load("harbor.sql")
    seed_52_hour_shape(site.cape.sql, r)
    r.hset(P + "worker_pools:live-pool", mapping={"heartbeat_at": int(time.time()) + 600,
                                                  "job_names": "EXECUTION_SWEEP,REPLICATION"})
    setup = shipped_harbor(site)
    report = await execute(setup, LABELS, dry_run=True, playbook=PLAYBOOK)
    assert report.outcome == "dry_run", report.error
    assert (report.steps[0].rows, report.steps[0].detail["locks_released"]) == (1, {"EXECUTION_SWEEP": 1})
    assert site.cape.sql("select status from execution where id = 1") == "Running"
    assert r.get(P + "jobs:EXECUTION_SWEEP:lock") == b"1" and r.sismember(P + "worker_pools", "dead-pool")
