"""Each task-table profile against its system's real schema, stuck and healthy side by side."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import redis

from deploy.local.harbor_shape import P, seed_52_hour_shape
from tests.conftest import Database
from tests.engines import engine_program, reaped, start_engine
from tests.exporter.helpers import collect, value
from tests.polling import wait_until
from tests.workers.celery_run import answers, celery_worker

CAPE_INSERT = ("insert into tasks (target, category, memory, enforce_timeout, clock, added_on, started_on, status,"
               " timeout, timedout) select 'x.exe', 'file', false, false, localtimestamp, {added}, {started},"
               " '{status}', {timeout}, false from generate_series(1, {n})")


def seed_cape(db: Database, n: int, status: str, added: str, started: str = "null", timeout: int = 0) -> None:
    db.sql(CAPE_INSERT.format(n=n, status=status, added=added, started=started, timeout=timeout))


def cape_config(db: Database, extra: str = "") -> str:
    return f"systems:\n  cape:\n    profile: cape\n    database: {db.dsn}\n{extra}"


async def test_cape_pending_pileup_is_counted_as_stuck(db: Database, tmp: Path) -> None:
    db.load("cape.sql")
    seed_cape(db, 5, "pending", "localtimestamp - interval '3 days'")
    seed_cape(db, 2, "pending", "localtimestamp - interval '5 seconds'")
    seed_cape(db, 40, "reported", "localtimestamp - interval '9 days'", "localtimestamp - interval '9 days'")
    r = (await collect(tmp, cape_config(db)))["tasks:cape"]
    assert r.up, r.error
    assert value(r, "taskmedic_tasks", status="pending") == 7
    assert value(r, "taskmedic_tasks", status="reported") == 40
    assert value(r, "taskmedic_stuck_tasks", reason="pending_too_long", status="pending") == 5
    age = value(r, "taskmedic_task_oldest_age_seconds", status="pending")
    assert age is not None and 3 * 86400 - 60 < age < 3 * 86400 + 60


async def test_cape_analyses_waiting_an_hour_for_the_processor_are_processing_stalled(db: Database, tmp: Path) -> None:
    db.load("cape.sql")
    seed_cape(db, 3, "completed", "localtimestamp - interval '4 hours'")
    db.sql("update tasks set completed_on = localtimestamp - interval '2 hours' where id <= 2")
    db.sql("update tasks set completed_on = localtimestamp - interval '5 minutes' where id = 3")  # being processed
    r = (await collect(tmp, cape_config(db)))["tasks:cape"]
    assert value(r, "taskmedic_stuck_tasks", reason="processing_stalled", status="completed") == 2
    assert value(r, "taskmedic_judgement_trusted", system="cape") == 1
    assert value(r, "taskmedic_clock_skew_seconds", system="cape") == 0


async def test_cape_every_status_and_reason_is_exported_as_zero(db: Database, tmp: Path) -> None:
    db.load("cape.sql")
    r = (await collect(tmp, cape_config(db)))["tasks:cape"]
    statuses = {dict(s.labels)["status"] for s in r.samples if s.name == "taskmedic_tasks"}
    assert statuses == {"banned", "pending", "running", "completed", "distributed", "reported", "recovered",
                        "failed_analysis", "failed_processing", "failed_reporting"}
    assert value(r, "taskmedic_stuck_tasks", reason="pending_too_long") == 0
    assert value(r, "taskmedic_stuck_tasks", reason="running_too_long") == 0
    assert value(r, "taskmedic_task_oldest_age_seconds", status="running") == 0


async def test_cape_running_past_its_own_timeout_is_stuck_but_a_long_timeout_is_not(db: Database, tmp: Path) -> None:
    db.load("cape.sql")
    # default timeout (0 → 200 s) plus 15 min grace: 2 h is stuck
    seed_cape(db, 2, "running", "localtimestamp - interval '2 hours'", "localtimestamp - interval '2 hours'", 0)
    # a slow but healthy analysis: 3 h timeout, running for 2 h
    seed_cape(db, 1, "running", "localtimestamp - interval '2 hours'", "localtimestamp - interval '2 hours'", 10800)
    # started a second ago
    seed_cape(db, 1, "running", "localtimestamp", "localtimestamp - interval '1 second'", 0)
    r = (await collect(tmp, cape_config(db)))["tasks:cape"]
    assert value(r, "taskmedic_tasks", status="running") == 4
    assert value(r, "taskmedic_stuck_tasks", reason="running_too_long") == 2


async def test_ages_use_the_database_clock_and_timezone(pg, tmp: Path) -> None:  # type: ignore[no-untyped-def]
    name = pg.create_database()
    pg.psql(f"alter database \"{name}\" set timezone to 'Pacific/Kiritimati'", db=name)  # UTC+14
    db = Database(pg, name)
    db.load("cape.sql")
    seed_cape(db, 1, "pending", "localtimestamp - interval '10 minutes'")
    r = (await collect(tmp, cape_config(db)))["tasks:cape"]
    age = value(r, "taskmedic_task_oldest_age_seconds", status="pending")
    assert age is not None and 590 < age < 660, age  # not off by the 14 h zone offset
    assert value(r, "taskmedic_stuck_tasks", reason="pending_too_long") == 0


async def test_cape_writing_utc_into_a_berlin_database_needs_the_system_timezone(pg, tmp: Path) -> None:  # type: ignore[no-untyped-def]
    name = pg.create_database()
    pg.psql(f"alter database \"{name}\" set timezone to 'Europe/Berlin'", db=name)
    db = Database(pg, name)
    db.load("cape.sql")
    # CAPE with cuckoo.conf's default timezone writes naive UTC
    seed_cape(db, 3, "pending", "(now() at time zone 'UTC') - interval '5 minutes'")
    r = (await collect(tmp, cape_config(db, "    timezone: UTC\n")))["tasks:cape"]
    assert value(r, "taskmedic_stuck_tasks", reason="pending_too_long") == 0
    age = value(r, "taskmedic_task_oldest_age_seconds", status="pending")
    assert age is not None and 290 < age < 360, age


def seed_timeline(db: Database, statuses: list[tuple[str, str]], detach: bool = True) -> None:
    """One timeline whose status history is `statuses` [(status, age), ...], oldest first, stored
    as Timesketch's set_status leaves it: older rows detached (parent_id NULL), the last attached."""
    tid = db.sql("insert into timeline (name, created_at) values ('t', now()) returning id").splitlines()[0]
    for i, (status, age) in enumerate(statuses):
        parent = tid if i == len(statuses) - 1 or not detach else "null"
        db.sql(f"insert into timeline_status (status, parent_id, created_at) "
               f"values ('{status}', {parent}, now() - interval '{age}')")


async def test_timesketch_processing_timeline_is_judged_by_its_latest_status(db: Database, tmp: Path,
                                                                             redis_url: str) -> None:
    db.load("timesketch.sql")
    seed_timeline(db, [("new", "5 hours"), ("processing", "4 hours")])  # orphaned by a dead worker
    seed_timeline(db, [("new", "5 hours"), ("processing", "4 hours"), ("ready", "3 hours")])  # finished
    seed_timeline(db, [("processing", "20 seconds")])  # just handed to Celery: within the grace
    # written by an older Timesketch that left its history attached: the newest row counts
    seed_timeline(db, [("processing", "6 hours"), ("ready", "5 hours")], detach=False)
    with celery_worker(redis_url, "idle", "idle", tmp):  # alive, importing none of them
        wait_until(lambda: answers(redis_url), 60, "the worker to answer")
        r = (await collect(tmp, f"systems:\n  ts:\n    profile: timesketch\n    database: {db.dsn}\n"
                                f"    redis: {redis_url}\n"))["tasks:ts"]
    assert r.up, r.error
    assert value(r, "taskmedic_tasks", status="processing") == 2
    assert value(r, "taskmedic_tasks", status="ready") == 2
    assert value(r, "taskmedic_stuck_tasks", reason="worker_gone", status="processing") == 1


def harbor_config(db: Database, redis_url: str) -> str:
    return (f"systems:\n  harbor:\n    profile: harbor\n    database: {db.dsn}\n    redis: {redis_url}\n"
            f"    queues: null\n")


async def test_harbor_sweep_on_a_dead_pool_is_worker_gone_and_a_live_13h_replication_is_not(
        db: Database, redis_url: str, tmp: Path) -> None:
    r = redis.Redis.from_url(redis_url)
    db.load("harbor.sql")
    seed_52_hour_shape(db.sql, r)
    r.hset(P + "worker_pools:live-pool", mapping={"heartbeat_at": int(time.time()), "job_names": "REPLICATION"})
    r.sadd(P + "worker_pools", "live-pool")
    result = (await collect(tmp, harbor_config(db, redis_url)))["tasks:harbor"]
    assert result.up, result.error
    assert value(result, "taskmedic_tasks", status="Running") == 2
    assert value(result, "taskmedic_stuck_tasks", reason="worker_gone", status="Running") == 1
    assert value(result, "taskmedic_stuck_tasks", reason="pending_too_long") == 3
    assert value(result, "taskmedic_stuck_tasks", reason="running_too_long") is None  # age is not death

    # the replication's pool misses two heartbeats (gocraft: 10 s): its execution is worker_gone too
    r.hset(P + "worker_pools:live-pool", "heartbeat_at", int(time.time()) - 11)
    result = (await collect(tmp, harbor_config(db, redis_url)))["tasks:harbor"]
    assert value(result, "taskmedic_stuck_tasks", reason="worker_gone", status="Running") == 2


async def test_harbor_liveness_is_unknown_when_the_job_service_redis_is_down(db: Database, tmp: Path) -> None:
    db.load("harbor.sql")
    db.sql("insert into execution (id, vendor_type, status, trigger) values (1, 'REPLICATION', 'Running', 'MANUAL');"
           "insert into task (execution_id, job_id, status, status_code, vendor_type) values "
           "(1, 'rep-1', 'Running', 2, 'REPLICATION')")
    result = (await collect(tmp, harbor_config(db, "redis://127.0.0.1:1/0")))["tasks:harbor"]
    assert not result.up and "Connect" in (result.error or "")  # not counted as stuck: not known
    assert value(result, "taskmedic_stuck_tasks", reason="worker_gone") is None


async def test_scanner_zombie_engine_is_process_gone(db: Database, tmp: Path) -> None:
    db.load("scanner.sql")
    program = engine_program(tmp)
    alive, dead = start_engine(program), start_engine(program)
    dead.kill()
    dead.wait()
    with reaped(alive):
        db.sql(f"insert into scan_tasks (target, state, engine_pid, started_at) values "
               f"('a', 'Running', {alive.pid}, now()), "  # started just after its engine
               f"('b', 'Running', {dead.pid}, now() - interval '2 hours'), "
               f"('d', 'Runnable', null, null)")
        db.sql("update scan_tasks set updated_at = now() - interval '2 hours' where target = 'd'")
        config = (f"systems:\n  scan:\n    profile: scanner\n    database: {db.dsn}\n"
                  "    tasks:\n      stuck:\n        process_gone: {min_age: 0s}\n")
        r = (await collect(tmp, config))["tasks:scan"]
        assert r.up, r.error
        assert value(r, "taskmedic_stuck_tasks", reason="process_gone", status="Running") == 1
        assert value(r, "taskmedic_stuck_tasks", reason="pending_too_long", status="Runnable") == 1
        alive.kill()
        alive.wait()
        r = (await collect(tmp, config))["tasks:scan"]
        assert value(r, "taskmedic_stuck_tasks", reason="process_gone") == 2


async def test_process_match_treats_a_reused_pid_as_gone(db: Database, tmp: Path) -> None:
    db.load("scanner.sql")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        db.sql(f"insert into scan_tasks (target, state, engine_pid, started_at) values "
               f"('a', 'Running', {other.pid}, now() - interval '1 hour')")
        extra = ("    tasks:\n      stuck:\n        process_gone:\n          process_match: zap-engine\n")
        r = (await collect(tmp, f"systems:\n  scan:\n    profile: scanner\n    database: {db.dsn}\n{extra}"))
        assert value(r["tasks:scan"], "taskmedic_stuck_tasks", reason="process_gone") == 1
    finally:
        other.kill()


CUSTOM = """systems:
  app:
    database: {dsn}
    redis: {redis}
    tasks:
      table: jobs
      statuses: [queued, started, done]
      live: [queued, started]
      age_columns: {{queued: enqueued_at, started: started_at}}
      stuck:
        heartbeat_lost: {{status: started, age: heartbeat_at, max_age: 2m}}
        worker_gone:
          status: started
          worker: worker
          age: started_at
          min_age: 10s
          live_workers: {live}
"""


async def test_custom_system_heartbeat_and_worker_checks(db: Database, redis_url: str, tmp: Path) -> None:
    import redis

    db.sql("create table jobs (id serial primary key, status text not null, worker text, "
           "enqueued_at timestamptz default now(), started_at timestamptz, heartbeat_at timestamptz)")
    db.sql("insert into jobs (status, worker, started_at, heartbeat_at) values "
           "('started', 'w1', now() - interval '1 hour', now() - interval '5 minutes'), "   # heartbeat lost
           "('started', 'w1', now() - interval '1 hour', now() - interval '110 seconds'), "  # just inside
           "('started', 'w2', now() - interval '1 hour', now()), "                          # worker w2 is gone
           "('started', 'w3', now() - interval '1 second', now()), "                        # too young to judge
           "('done', 'w1', now() - interval '2 days', null)")
    client = redis.Redis.from_url(redis_url)
    client.sadd("rq:workers", "rq:worker:w1", "rq:worker:w2")  # w2 died: still listed in the set
    client.hset("rq:worker:w1", "state", "busy")  # RQ's worker key, which expires with the worker
    by_key = CUSTOM.format(dsn=db.dsn, redis=redis_url, live='{key_prefix: "rq:worker:"}')
    r = (await collect(tmp, by_key))["tasks:app"]
    assert r.up, r.error
    assert value(r, "taskmedic_stuck_tasks", reason="heartbeat_lost") == 1
    assert value(r, "taskmedic_stuck_tasks", reason="worker_gone") == 1
    assert value(r, "taskmedic_tasks", status="done") == 1
    # the set still names the dead w2: only its removal from the set would show it gone
    by_set = CUSTOM.format(dsn=db.dsn, redis=redis_url, live='{redis_set: "rq:workers", member_prefix: "rq:worker:"}')
    assert value((await collect(tmp, by_set))["tasks:app"], "taskmedic_stuck_tasks", reason="worker_gone") == 0
    client.srem("rq:workers", "rq:worker:w2")
    assert value((await collect(tmp, by_set))["tasks:app"], "taskmedic_stuck_tasks", reason="worker_gone") == 1


async def test_unreachable_database_reports_down_without_series(tmp: Path) -> None:
    r = (await collect(tmp, "systems:\n  cape:\n    profile: cape\n    database: postgresql://u@127.0.0.1:1/x\n"
                            "    timeout: 2s\n"))["tasks:cape"]
    assert not r.up and r.error
    assert r.samples == ()
