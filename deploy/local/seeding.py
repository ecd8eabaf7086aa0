"""The demo's data: the S1, S2, S3 and S5 incidents, a Celery and an RQ incident, each next to
healthy-but-slow work that must never be touched, written in each system's real shape."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from deploy.local.harbor_shape import P as HARBOR_P
from deploy.local.harbor_shape import seed_52_hour_shape, start_pool
from deploy.local.servers import PostgresServer, RedisServer
from taskmedic.wire import kombu, rq

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"  # the upstream systems' schemas, shared with the tests
RQ_STARTED, RQ_FAILED = rq.registry_key("started", "default"), rq.registry_key("failed", "default")


@dataclass
class Incident:
    """One seeded problem: how the exporter reports it and how to tell it is healed."""

    name: str
    system: str
    reason: str
    healed: Callable[[], bool]
    events: dict[str, float] = field(default_factory=dict)


@dataclass
class Seeding:
    """Writes the demo's databases and Redis data (Harbor in db 0, Celery in 1, RQ in 2)."""

    root: Path
    pg: PostgresServer
    rs: RedisServer
    engines: list[subprocess.Popen[bytes]] = field(default_factory=list)  # scan engines, killed at the end

    def databases(self) -> None:
        for db, fixture in (("cape", "cape.sql"), ("timesketch", "timesketch.sql"), ("harbor", "harbor.sql"),
                            ("scanner", "scanner.sql")):
            self.pg.psql(f"create database {db}")
            self.pg.psql_file(FIXTURES / fixture, db=db)
        self.pg.psql("create database journal")

    def sql(self, db: str, statement: str) -> str:
        return self.pg.psql(statement, db=db)

    def seed_cape(self) -> None:
        insert = ("insert into tasks (target, category, memory, enforce_timeout, clock, added_on, started_on, "
                  "status, timeout, timedout) select '{target}', 'file', false, false, localtimestamp, {added}, "
                  "{started}, '{status}', {timeout}, false from generate_series(1, {n})")
        self.sql("cape", insert.format(target="stuck.exe", n=5, status="pending", timeout=0, started="null",
                                       added="localtimestamp - interval '3 days'"))
        self.sql("cape", insert.format(target="fresh.exe", n=2, status="pending", timeout=0, started="null",
                                       added="localtimestamp - interval '5 seconds'"))
        # slow but healthy: a 3 h analysis one hour in
        self.sql("cape", insert.format(target="slow.exe", n=1, status="running", timeout=10800,
                                       added="localtimestamp - interval '1 hour'",
                                       started="localtimestamp - interval '1 hour'"))

    def seed_timesketch(self) -> None:
        """An import whose worker died, and a 3-hour import on a live Celery worker (older than any
        age threshold, alive all the same)."""
        from celery import Celery

        broker = self.rs.url(3)
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "deploy.local.timesketch_worker", "worker",
                                   "--pool=prefork", "--concurrency=1", "--loglevel=error", "--without-mingle",
                                   "--without-gossip"], env={**os.environ, "TIMESKETCH_BROKER": broker},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                                  start_new_session=True)
        self.engines.append(worker)
        api = Celery("timesketch-api", broker=broker, set_as_current=False)
        for name, age in (("orphaned", "4 hours"), ("importing", "3 hours")):
            tid = self.sql("timesketch", f"insert into timeline (name, created_at, updated_at) values "
                                         f"('{name}', now(), now()) returning id").splitlines()[0]
            self.sql("timesketch", f"insert into timeline_status (status, parent_id, created_at, updated_at) "
                                   f"values ('processing', {tid}, now() - interval '{age}', now() - interval '{age}')")
            if name == "importing":
                api.send_task("timesketch.lib.tasks.run_plaso",
                              args=["/var/lib/timesketch/upload/big.plaso", "", name, f"index{tid}", "plaso", int(tid)])

    def seed_harbor(self) -> None:
        """S3's 52-hour shape (deploy/local/harbor_shape.py): a dead pool holding the EXECUTION_SWEEP lock,
        three sweeps queued behind it, and a live gocraft-style pool running a 13 h replication."""
        seed_52_hour_shape(lambda statement: self.sql("harbor", statement), redis.Redis.from_url(self.rs.url(0)))
        self.engines.append(start_pool(self.rs.url(0)))

    def seed_scanner(self) -> None:
        # The engine is a program of its own (the playbook judges PIDs by their executable): a
        # copy of `sleep` named scan-engine stands in for it.
        program = self.root / "scan-engine"
        shutil.copy(shutil.which("sleep") or "/bin/sleep", program)

        def engine() -> subprocess.Popen[bytes]:
            p = subprocess.Popen([str(program), "3600"])
            self.engines.append(p)
            return p
        dead, alive = engine(), engine()
        dead.kill()
        dead.wait()
        # The live engine's task starts now, after its process (an older start would make its PID
        # one the OS reused, i.e. a zombie task).
        self.sql("scanner", f"insert into scan_tasks (target, state, engine_pid, started_at) values "
                            f"('https://zombie.example', 'Running', {dead.pid}, now() - interval '2 hours'), "
                            f"('https://slow.example', 'Running', {alive.pid}, now())")

    def seed_celery(self) -> None:
        r = redis.Redis.from_url(self.rs.url(1))
        for i in range(20):
            r.lpush("celery", json.dumps({"body": "", "headers": {"id": f"backlog-{i}", "task": "work"},
                                          "properties": {"delivery_tag": f"b{i}"}}))
        # two messages a dead worker took two hours ago, past the 1 h visibility timeout
        for tag in ("dead-1", "dead-2"):
            message = {"body": "", "headers": {"id": tag, "task": "work"}, "properties": {"delivery_tag": tag}}
            r.hset(kombu.UNACKED, tag, json.dumps([message, "", "celery"]))
            r.zadd(kombu.UNACKED_INDEX, {tag: time.time() - 7200})
        # and one a live worker took a minute ago: in flight, healthy
        message = {"body": "", "headers": {"id": "live-1", "task": "work"}, "properties": {"delivery_tag": "live-1"}}
        r.hset(kombu.UNACKED, "live-1", json.dumps([message, "", "celery"]))
        r.zadd(kombu.UNACKED_INDEX, {"live-1": time.time() - 60})

    def seed_rq(self) -> None:
        """A job whose worker died an hour ago (its started-registry lease expired) and one a live
        worker is running (lease in the future)."""
        r = redis.Redis.from_url(self.rs.url(2))
        r.sadd(rq.QUEUES, rq.queue_key("default"))
        for job, lease in (("abandoned-1", -3600), ("running-1", 600)):
            r.hset(rq.job_key(job), mapping={"status": "started", "origin": "default",
                                             "enqueued_at": "2026-11-23T10:00:00.000000Z"})
            r.zadd(RQ_STARTED, {job: time.time() + lease})

    def stop_engines(self) -> None:
        """Kill every seeded process and whatever it started (a Celery worker's pool children)."""
        for engine in self.engines:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if engine.poll() is None and os.getpgid(engine.pid) == engine.pid:
                    os.killpg(engine.pid, signal.SIGKILL)
            engine.kill()

    def seed(self) -> list[Incident]:
        self.seed_cape()
        self.seed_timesketch()
        self.seed_harbor()
        self.seed_scanner()
        self.seed_celery()
        self.seed_rq()
        r0, r1, r2 = (redis.Redis.from_url(self.rs.url(db)) for db in (0, 1, 2))
        return [
            Incident("S1 CAPE pending pile-up", "cape", "pending_too_long", lambda: self.sql(
                "cape", "select count(*) from tasks where status = 'pending' and target = 'stuck.exe'") == "0"),
            Incident("S2 Timesketch timeline orphaned in processing", "timesketch", "worker_gone",
                     lambda: self.sql("timesketch", "select s.status from timeline t join lateral (select status "
                                      "from timeline_status where parent_id = t.id order by id desc limit 1) s "
                                      "on true where t.name = 'orphaned'") == "fail"),
            Incident("S3 Harbor EXECUTION_SWEEP held by a dead worker pool", "harbor", "worker_gone",
                     lambda: self.sql("harbor", "select status from execution where id = 1") != "Running"
                     and r0.llen(HARBOR_P + "test:done") == 3),
            Incident("S5 scanner zombie engine", "scanner", "process_gone", lambda: self.sql(
                "scanner", "select state from scan_tasks where target = 'https://zombie.example'") == "Terminated"),
            Incident("Celery messages held by a dead worker", "celery", "unacked_too_long",
                     lambda: not r1.hexists(kombu.UNACKED, "dead-1") and r1.llen("celery") == 22),
            Incident("RQ job abandoned by a dead worker", "rq", "abandoned",
                     lambda: r2.zscore(RQ_FAILED, "abandoned-1") is not None),
        ]

    def untouched(self) -> list[str]:
        """Healthy-but-slow work that must never be touched; returns what was."""
        checks = {
            "CAPE fresh pending tasks": self.sql("cape", "select count(*) from tasks where target = 'fresh.exe' "
                                                         "and status = 'pending'") == "2",
            "CAPE slow running analysis": self.sql("cape", "select status from tasks where target = 'slow.exe'")
            == "running",
            "Timesketch timeline still importing": self.sql(
                "timesketch", "select s.status from timeline t join lateral (select status from timeline_status "
                "where parent_id = t.id order by id desc limit 1) s on true where t.name = 'importing'")
            == "processing",
            "Harbor 13 h replication on a live pool": self.sql("harbor", "select status from execution where id = 5")
            == "Running" and redis.Redis.from_url(self.rs.url(0)).llen(
                HARBOR_P + "jobs:REPLICATION:live-pool:inprogress") == 1,
            "Celery message in flight on a live worker": redis.Redis.from_url(self.rs.url(1)).hexists(
                kombu.UNACKED, "live-1"),
            "RQ job running on a live worker": redis.Redis.from_url(self.rs.url(2)).zscore(
                RQ_STARTED, "running-1") is not None,
            "scanner engine still scanning": self.sql(
                "scanner", "select state from scan_tasks where target = 'https://slow.example'") == "Running",
        }
        return [name for name, ok in checks.items() if not ok]
