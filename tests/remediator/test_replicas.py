"""Real `taskmedic-remediator` processes sharing one journal: HA pairs, SIGKILL mid-run, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.polling import wait_until
from tests.remediator.kit import AUTH, FAIL_STALE, Site, alert, count, payload, seed_cape
from tests.services import free_port, running, wait_http

STALE = "status = 'pending' and added_on < localtimestamp - interval '1 hour'"

# Fails the stale tasks, then waits in the same transaction until the test creates `released`:
# a kill in between must leave no partial write.
SLOW_REPAIR = f"""
name: slow-repair
match: {{alertname: TaskmedicStuckTasks}}
retry_interrupted: true
steps:
  - name: fail stale pending tasks
    sql: {{system: cape, statement: "update tasks set status = 'failed_analysis' where {STALE}",
          max_rows_after_write: true}}
  - name: wait for the test
    sql: {{system: cape, query: "select pg_sleep(case when to_regclass('released') is null then 30 else 0 end)"}}
"""


def post(port: int, body: bytes) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/alerts", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **AUTH})
    with urllib.request.urlopen(request, timeout=10) as r:
        return int(r.status)


@contextmanager
def replica(site: Site, config: Path, name: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    argv = [sys.executable, "-m", "remediator", "--config", str(config), "--listen", f"127.0.0.1:{port}",
            "--log-format", "json"]
    with running(argv, site.tmp / f"{name}.log", env={"REPLICA": name}) as proc:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield port, proc


def outcomes(site: Site) -> list[str]:
    out = site.journal.sql("select coalesce(outcome, status) from taskmedic_runs order by id")
    return out.splitlines() if out else []


def test_the_same_alert_posted_to_two_replicas_runs_once(site: Site) -> None:
    seed_cape(site.cape)
    config = site.write(FAIL_STALE, replica="${REPLICA}")
    body = json.dumps(payload()).encode()
    with ExitStack() as stack:
        ports = [stack.enter_context(replica(site, config, name))[0] for name in ("a", "b")]
        assert [post(port, body) for port in ports * 3] == [200] * 6
        wait_until(lambda: outcomes(site) == ["succeeded"], 20, "the run")
        time.sleep(1)  # time for a wrong second run to show up
    assert outcomes(site) == ["succeeded"]
    assert count(site.cape, "status = 'failed_analysis'") == 5


def test_a_replica_killed_mid_transaction_leaves_no_partial_write_and_the_run_is_retried(site: Site) -> None:
    seed_cape(site.cape)
    config = site.write(SLOW_REPAIR, replica="${REPLICA}", lease=2)
    with replica(site, config, "doomed") as (port, proc):
        assert post(port, json.dumps(payload()).encode()) == 200
        wait_until(lambda: site.cape.sql("select count(*) from pg_stat_activity where query like 'select pg_sleep%'")
                   == "1", 20, "the update to be done and the sleep to start")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert count(site.cape, STALE) == 5  # the update was never committed
    assert outcomes(site) == ["running"]
    site.cape.sql("create table released ()")
    with replica(site, config, "heir"):
        wait_until(lambda: outcomes(site) == ["succeeded"], 20, "the retried run")
    row = site.journal.sql("select attempts, replica, history->0->>'replica', history->0->>'outcome' "
                           "from taskmedic_runs")
    assert row == "2|heir|doomed|interrupted"
    assert count(site.cape, STALE) == 0


def test_sigterm_stops_within_the_grace_period_and_releases_the_unfinished_run(site: Site) -> None:
    seed_cape(site.cape)
    book = SLOW_REPAIR.replace("retry_interrupted: true", "retry_interrupted: false")
    config = site.write(book, replica="${REPLICA}", lease=30, shutdown_grace=1)
    with replica(site, config, "leaving") as (port, proc):
        assert post(port, json.dumps(payload()).encode()) == 200
        wait_until(lambda: site.cape.sql("select count(*) from pg_stat_activity where query like 'select pg_sleep%'")
                   == "1", 20, "the sleep to start")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert time.monotonic() - started < 10
    assert count(site.cape, STALE) == 5
    assert site.journal.sql("select status, lease_until < now() from taskmedic_runs") == "running|t"
    with replica(site, config, "next"):
        wait_until(lambda: outcomes(site) == ["interrupted"], 10, "the released run to be settled")


def test_max_runs_per_hour_holds_across_two_replica_processes(site: Site) -> None:
    seed_cape(site.cape)
    book = """
name: racy
match: {alertname: TaskmedicStuckTasks}
exclusive: false
max_runs_per_hour: 3
steps:
  - name: take a while
    sql: {system: cape, query: "select pg_sleep(1)"}
"""
    config = site.write(book, replica="${REPLICA}", workers=4)
    body = json.dumps(payload(*(alert(f"f{i}") for i in range(8)))).encode()
    with ExitStack() as stack:
        ports = [stack.enter_context(replica(site, config, name))[0] for name in ("a", "b")]
        assert post(ports[0], body) == 200
        wait_until(lambda: len(outcomes(site)) == 8 and not {"pending", "running"} & set(outcomes(site)), 60,
                   "every run")
    assert sorted(outcomes(site)) == ["succeeded"] * 3 + ["suppressed"] * 5
