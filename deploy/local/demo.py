"""`make demo`: the whole loop on one machine, with real servers.

Starts a throwaway PostgreSQL, Redis, Prometheus (the shipped rules, 1 s intervals, `for:` cut to
seconds) and Alertmanager (webhook to the remediator with a bearer token), the exporter and the
remediator with the shipped playbooks; seeds the S1, S2, S3 and S5 incidents and a Celery
backlog next to healthy-but-slow work; prints a timeline a person can follow:

    detected → alert firing → webhook → playbook → healed

`--once` exits 0 when every incident is healed and the healthy work is untouched, 1 on timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.services import PostgresServer, RedisServer, free_port, tempdir, wait_http

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
HARBOR_NS = "{harbor_job_service_namespace}:"
BOLD, DIM, GREEN, RED, YELLOW, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[33m", "\033[0m"


def color(text: str, code: str) -> str:
    return f"{code}{text}{RESET}" if sys.stdout.isatty() else text


def http_json(url: str, headers: dict[str, str] | None = None) -> object:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=3) as r:
        return json.loads(r.read())


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as r:
        return str(r.read().decode())


@dataclass
class Incident:
    """One seeded problem: how the exporter reports it and how to tell it is healed."""

    name: str
    system: str
    reason: str
    healed: Callable[[], bool]
    events: dict[str, float] = field(default_factory=dict)


@dataclass
class Demo:
    root: Path
    pg: PostgresServer
    rs: RedisServer
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    ports: dict[str, int] = field(default_factory=lambda: {k: free_port() for k in
                                                            ("exporter", "remediator", "prometheus", "alertmanager")})
    engines: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self, what: str) -> str:
        return f"http://127.0.0.1:{self.ports[what]}"

    # ---- data ------------------------------------------------------------------------------
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
        self.sql("harbor", "insert into execution (id, vendor_type, status, trigger, start_time) values "
                           "(1, 'EXECUTION_SWEEP', 'Running', 'SCHEDULE', now() - interval '3 days'), "
                           "(2, 'GARBAGE_COLLECTION', 'Running', 'MANUAL', now() - interval '10 minutes')")
        self.sql("harbor", "insert into task (execution_id, job_id, status, status_code, vendor_type, "
                           "start_time) values "
                           "(1, 'sweep-dangling-1', 'Running', 2, 'EXECUTION_SWEEP', now() - interval '3 days'), "
                           "(2, 'gc-healthy-1', 'Running', 2, 'GARBAGE_COLLECTION', now() - interval '10 minutes')")
        r = redis.Redis.from_url(self.rs.url(0))
        r.sadd(HARBOR_NS + "known_jobs", "EXECUTION_SWEEP", "GARBAGE_COLLECTION")
        now = int(time.time())
        r.lpush(HARBOR_NS + "jobs:EXECUTION_SWEEP",
                json.dumps({"name": "EXECUTION_SWEEP", "id": "sweep-dangling-1", "t": now - 3 * 86400}))
        r.lpush(HARBOR_NS + "jobs:GARBAGE_COLLECTION",
                json.dumps({"name": "GARBAGE_COLLECTION", "id": "gc-healthy-1", "t": now - 600}))
        r.hset(HARBOR_NS + "job_stats:sweep-dangling-1", mapping={"status": "Running", "id": "sweep-dangling-1"})

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
        # (kombu's layout: `unacked` holds [message, exchange, routing_key], `unacked_index` the times)
        for tag in ("dead-1", "dead-2"):
            message = {"body": "", "headers": {"id": tag, "task": "work"}, "properties": {"delivery_tag": tag}}
            r.hset("unacked", tag, json.dumps([message, "", "celery"]))
            r.zadd("unacked_index", {tag: time.time() - 7200})
        # and one a live worker took a minute ago: in flight, healthy
        message = {"body": "", "headers": {"id": "live-1", "task": "work"}, "properties": {"delivery_tag": "live-1"}}
        r.hset("unacked", "live-1", json.dumps([message, "", "celery"]))
        r.zadd("unacked_index", {"live-1": time.time() - 60})

    def seed_rq(self) -> None:
        """RQ's layout: a job whose worker died an hour ago (its started-registry lease expired)
        and one a live worker is running (lease in the future)."""
        r = redis.Redis.from_url(self.rs.url(2))
        r.sadd("rq:queues", "rq:queue:default")
        for job, lease in (("abandoned-1", -3600), ("running-1", 600)):
            r.hset(f"rq:job:{job}", mapping={"status": "started", "origin": "default",
                                             "enqueued_at": "2026-11-23T10:00:00.000000Z"})
            r.zadd("rq:wip:default", {job: time.time() + lease})

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
            Incident("S3 Harbor EXECUTION_SWEEP stuck in Running", "harbor", "running_too_long",
                     lambda: self.sql("harbor", "select status from execution where id = 1") != "Running"
                     and not any(b"sweep-dangling-1" in j for j in r0.lrange(HARBOR_NS + "jobs:EXECUTION_SWEEP",
                                                                             0, -1))),
            Incident("S5 scanner zombie engine", "scanner", "process_gone", lambda: self.sql(
                "scanner", "select state from scan_tasks where target = 'https://zombie.example'") == "Terminated"),
            Incident("Celery messages held by a dead worker", "celery", "unacked_too_long",
                     lambda: not r1.hexists("unacked", "dead-1") and r1.llen("celery") == 22),
            Incident("RQ job abandoned by a dead worker", "rq", "abandoned",
                     lambda: r2.zscore("rq:failed:default", "abandoned-1") is not None),
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
            "Harbor running garbage collection": self.sql("harbor", "select status from execution where id = 2")
            == "Running" and redis.Redis.from_url(self.rs.url(0)).llen(HARBOR_NS + "jobs:GARBAGE_COLLECTION") == 1,
            "Celery message in flight on a live worker": redis.Redis.from_url(self.rs.url(1)).hexists(
                "unacked", "live-1"),
            "RQ job running on a live worker": redis.Redis.from_url(self.rs.url(2)).zscore(
                "rq:wip:default", "running-1") is not None,
            "scanner engine still scanning": self.sql(
                "scanner", "select state from scan_tasks where target = 'https://slow.example'") == "Running",
        }
        return [name for name, ok in checks.items() if not ok]

    # ---- configuration -----------------------------------------------------------------------
    def write_config(self) -> Path:
        dsn = self.pg.dsn
        cfg = self.root / "taskmedic.yml"
        storage = self.root / "storage"
        storage.mkdir(exist_ok=True)
        backups = self.root / "backups"
        backups.mkdir(exist_ok=True)
        for day, age in ((21, 2 * 86400), (22, 86400)):
            path = backups / f"sysreptor-2026-11-{day}.zip"
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("backup.jsonl", "{}\n" * 10_000)
            os.utime(path, (time.time() - age, time.time() - age))
        cfg.write_text(f"""# Written by `make demo`: the contract's minimal config plus 1 s intervals.
systems:
  cape:
    profile: cape
    database: {dsn("cape")}
    interval: 1s
  timesketch:
    profile: timesketch
    database: {dsn("timesketch")}
    redis: {self.rs.url(3)}   # Timesketch's Celery broker: its workers are asked what they import
    interval: 1s
  harbor:
    profile: harbor
    database: {dsn("harbor")}
    redis: {self.rs.url(0)}
    interval: 1s
  scanner:
    profile: scanner
    database: {dsn("scanner")}
    interval: 1s
  celery:
    profile: celery
    redis: {self.rs.url(1)}
    interval: 1s
  rq:
    profile: rq
    redis: {self.rs.url(2)}
    interval: 1s
disks:
  - path: {storage}
    interval: 1s
backups:
  sysreptor:
    path: {backups}
    pattern: "*.zip"
    interval: 1s
remediator:
  journal: {dsn("journal")}
  playbooks: {ROOT / "rules" / "playbooks"}
  auth:
    bearer_token: ${{TASKMEDIC_WEBHOOK_TOKEN}}
  poll_interval: 200ms
""")
        return cfg

    def write_rules(self) -> Path:
        """The shipped rules with every `for:` cut to 2 s, so the demo fires in seconds."""
        out = self.root / "rules"
        out.mkdir(exist_ok=True)
        for f in (ROOT / "rules").glob("*.rules.yml"):
            (out / f.name).write_text(re.sub(r"(?m)^(\s+for:\s*)\S+\s*$", r"\g<1>2s", f.read_text()))
        return out

    def write_prometheus(self, rules: Path) -> Path:
        path = self.root / "prometheus.yml"
        path.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{rules}/*.rules.yml"]
alerting:
  alertmanagers:
    - static_configs: [{{targets: ["127.0.0.1:{self.ports['alertmanager']}"]}}]
scrape_configs:
  - job_name: taskmedic-exporter
    static_configs: [{{targets: ["127.0.0.1:{self.ports['exporter']}"]}}]
  - job_name: taskmedic-remediator
    static_configs: [{{targets: ["127.0.0.1:{self.ports['remediator']}"]}}]
""")
        return path

    def write_alertmanager(self) -> Path:
        token = self.root / "webhook-token"
        token.write_text(self.token)
        path = self.root / "alertmanager.yml"
        path.write_text(f"""route:
  receiver: taskmedic
  group_by: [alertname, system, status, reason, path, backup, queue]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1h
receivers:
  - name: taskmedic
    webhook_configs:
      - url: {self.url('remediator')}/alerts
        send_resolved: true
        http_config:
          authorization:
            credentials_file: {token}
""")
        return path


@contextmanager
def process(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                             start_new_session=True)
        try:
            yield p
        finally:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, text: str, code: str = "") -> None:
        stamp = f"[{time.monotonic() - self.t0:6.1f}s]"
        print(f"{color(stamp, DIM)} {color(text, code) if code else text}", flush=True)


def stuck_series(exporter: str) -> dict[tuple[str, str], float]:
    out = {}
    for fam in text_string_to_metric_families(http_text(exporter + "/metrics")):
        for s in fam.samples:
            if s.name == "taskmedic_stuck_tasks":
                out[(s.labels["system"], s.labels["reason"])] = s.value
    return out


def firing_alerts(prometheus: str) -> set[tuple[str, str]]:
    data = http_json(prometheus + "/api/v1/alerts")
    assert isinstance(data, dict)
    return {(a["labels"].get("system", ""), a["labels"].get("reason", "")) for a in data["data"]["alerts"]
            if a["labels"].get("alertname") == "TaskmedicStuckTasks" and a["state"] == "firing"}


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a seeded process and whatever it started (a Celery worker's pool children)."""
    with suppress(ProcessLookupError, PermissionError):
        if proc.poll() is None and os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.kill()


def runs(remediator: str, token: str) -> list[dict[str, object]]:
    data = http_json(remediator + "/runs?limit=200", {"Authorization": f"Bearer {token}"})
    if isinstance(data, dict):
        data = data.get("runs", [])
    assert isinstance(data, list)
    return data


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target and annotation in grafana/dashboards."""
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, object]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))  # type: ignore[arg-type]
            for target in panel.get("targets", []):  # type: ignore[attr-defined]
                if target.get("expr"):
                    out.append((str(panel.get("title")), target["expr"]))

    for f in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(f.read_text())
        walk(board["panels"])
        out += [(f"annotation {a['name']}", a["expr"]) for a in board.get("annotations", {}).get("list", [])
                if a.get("expr")]
    return out


def empty_panels(prometheus: str) -> list[str]:
    """Panels whose query returns no series against the live stack (every variable = all)."""
    empty = []
    for title, expr in dashboard_queries():
        query = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
        query = re.sub(r"\$[a-z]\w*", ".*", query)  # $cluster, $job, $instance, $system
        data = http_json(f"{prometheus}/api/v1/query?query={urllib.parse.quote(query)}")
        assert isinstance(data, dict)
        if not data["data"]["result"]:
            empty.append(f"{title}: {expr}")
    return empty


def watch(demo: Demo, incidents: list[Incident], timeline: Timeline, deadline: float) -> bool:
    seen_runs: dict[object, str] = {}
    while time.monotonic() < deadline:
        try:
            stuck = stuck_series(demo.url("exporter"))
            firing = firing_alerts(demo.url("prometheus"))
            all_runs = runs(demo.url("remediator"), demo.token)
        except OSError:
            time.sleep(0.5)
            continue
        for run in all_runs:
            rid, outcome = run.get("id"), str(run.get("outcome") or run.get("status"))
            if seen_runs.get(rid) != outcome:
                seen_runs[rid] = outcome
                code = GREEN if outcome == "succeeded" else (YELLOW if outcome in ("pending", "running", "None")
                                                            else RED)
                timeline.say(f"  webhook → playbook {run.get('playbook')} (run {rid}): {outcome}", code)
        for inc in incidents:
            key = (inc.system, inc.reason)
            if "detected" not in inc.events and stuck.get(key, 0) > 0:
                inc.events["detected"] = time.monotonic()
                timeline.say(f"{inc.name}: detected, {stuck[key]:.0f} stuck "
                             f"(taskmedic_stuck_tasks{{system=\"{inc.system}\",reason=\"{inc.reason}\"}})", YELLOW)
            if "firing" not in inc.events and key in firing:
                inc.events["firing"] = time.monotonic()
                timeline.say(f"{inc.name}: alert TaskmedicStuckTasks firing", YELLOW)
            if "healed" not in inc.events and "detected" in inc.events and inc.healed():
                inc.events["healed"] = time.monotonic()
                timeline.say(f"{inc.name}: healed", GREEN + BOLD)
        if all("healed" in i.events for i in incidents):
            return True
        time.sleep(0.5)
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--once", action="store_true", help="exit when every incident is healed (1 on timeout)")
    p.add_argument("--timeout", type=float, default=150.0, help="seconds to wait for healing with --once")
    args = p.parse_args(argv)
    for binary in ("prometheus", "prometheus-alertmanager", "redis-server"):
        if shutil.which(binary) is None:
            print(f"{binary} is missing: run `make deps` (or `make demo`, which installs it)", file=sys.stderr)
            return 1
    root = tempdir("taskmedic-demo-")
    timeline = Timeline()
    pg, rs = PostgresServer(root / "pg"), RedisServer(root / "redis")
    demo = Demo(root, pg, rs)
    ok = False
    try:
        with ExitStack() as stack:
            pg.init()
            pg.start()
            stack.callback(pg.stop, "immediate")
            rs.start()
            stack.callback(rs.stop)
            demo.databases()
            cfg = demo.write_config()
            env = {"TASKMEDIC_WEBHOOK_TOKEN": demo.token}
            py = [sys.executable, "-m"]
            stack.enter_context(process([*py, "exporter", "--config", str(cfg), "--listen",
                                         f"127.0.0.1:{demo.ports['exporter']}"], root / "exporter.log"))
            stack.enter_context(process([*py, "remediator", "--config", str(cfg), "--listen",
                                         f"127.0.0.1:{demo.ports['remediator']}"], root / "remediator.log", env))
            stack.enter_context(process(["prometheus-alertmanager", f"--config.file={demo.write_alertmanager()}",
                                         f"--storage.path={root}/am", "--cluster.listen-address=",
                                         f"--web.listen-address=127.0.0.1:{demo.ports['alertmanager']}"],
                                        root / "alertmanager.log"))
            stack.enter_context(process(["prometheus", f"--config.file={demo.write_prometheus(demo.write_rules())}",
                                         f"--storage.tsdb.path={root}/prom", "--rules.alert.resend-delay=1s",
                                         f"--web.listen-address=127.0.0.1:{demo.ports['prometheus']}"],
                                        root / "prometheus.log"))
            for what, path in (("exporter", "/healthz"), ("remediator", "/healthz"), ("alertmanager", "/-/ready"),
                               ("prometheus", "/-/ready")):
                wait_http(demo.url(what) + path, 60)
            stack.callback(lambda: [stop_group(e) for e in demo.engines])
            print(f"{color('taskmedic demo', BOLD)} — everything below is real and local:")
            for what, path in (("exporter", "/metrics"), ("remediator", "/runs"), ("prometheus", "/alerts"),
                               ("alertmanager", "/")):
                print(f"  {what:<13} {demo.url(what)}{path}")
            print(f"  (remediator token for /runs: {demo.token}; logs and config in {root})\n")
            incidents = demo.seed()
            timeline.say(f"seeded {len(incidents)} incidents and the healthy-but-slow work next to them")
            healed = watch(demo, incidents, timeline, time.monotonic() + (args.timeout if args.once else 3600))
            touched = demo.untouched()
            if args.once and healed:
                # rate() and increase() need two scrapes of a series born moments ago
                give_up = time.monotonic() + 20
                while (empty := empty_panels(demo.url("prometheus"))) and time.monotonic() < give_up:
                    time.sleep(1)
                for panel in empty:
                    timeline.say(f"dashboard panel without data: {panel}", RED)
                if not empty:
                    timeline.say(f"all {len(dashboard_queries())} dashboard queries return series")
                touched += [f"dashboard: {p}" for p in empty]
            for name in touched:
                timeline.say(f"TOUCHED healthy work: {name}", RED + BOLD)
            ok = healed and not touched
            if ok:
                worst = max(i.events["healed"] - timeline.t0 for i in incidents)
                timeline.say(f"all {len(incidents)} incidents healed ({worst:.0f}s after the start); "
                             "healthy work untouched", GREEN + BOLD)
            else:
                for inc in incidents:
                    if "healed" not in inc.events:
                        timeline.say(f"NOT healed: {inc.name} (reached: {', '.join(inc.events) or 'nothing'})", RED)
                for log in ("exporter.log", "remediator.log"):
                    print(f"--- last lines of {log}:\n" + "\n".join((root / log).read_text().splitlines()[-15:]))
            if not args.once:
                print("\nThe stack keeps running; Ctrl-C stops it.")
                with suppress(KeyboardInterrupt):
                    signal.pause()
    finally:
        if ok:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs and config kept in {root}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
