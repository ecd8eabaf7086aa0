"""The installed command as an operator runs it: scrape, outages, recovery, shutdown."""

from __future__ import annotations

import shutil
import signal
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.polling import wait_until
from tests.services import PostgresServer, free_port, running, tempdir, wait_http


def scrape(port: int, accept: str | None = None) -> tuple[str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.headers["Content-Type"], r.read().decode()


def metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    _, text = scrape(port)
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def get(m: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    hits = [v for (n, ls), v in m.items() if n == name and set(labels.items()) <= ls]
    return sum(hits) if hits else None


def test_database_outage_drops_only_its_collector_and_recovers(tmp: Path) -> None:
    pg = PostgresServer(tempdir("taskmedic-pg-"))  # its own server: this test stops it
    pg.init()
    pg.start()
    pg.psql("create database cape")
    pg.psql_file(Path(__file__).parents[1] / "fixtures" / "cape.sql", db="cape")
    pg.psql("insert into tasks (target, category, memory, enforce_timeout, clock, added_on, status, timedout) "
            "select 'x', 'file', false, false, localtimestamp, localtimestamp - interval '2 days', 'pending', false "
            "from generate_series(1, 3)", db="cape")
    cfg = tmp / "taskmedic.yml"
    cfg.write_text(f"systems:\n  cape:\n    profile: cape\n    database: ${{CAPE_DB}}\n    interval: 1s\n"
                   f"    timeout: 2s\ndisks:\n  - path: {tmp}\n    interval: 1s\n")
    port = free_port()
    log = tmp / "exporter.log"
    env = {"CAPE_DB": pg.dsn("cape").replace("postgres@", "postgres:pw-not-in-logs@")}
    try:
        with running([sys.executable, "-m", "exporter", "--config", str(cfg), "--listen", f"127.0.0.1:{port}",
                      "--log-format", "json"], log, env) as proc:
            wait_http(f"http://127.0.0.1:{port}/healthz")
            wait_until(lambda: get(metrics(port), "taskmedic_stuck_tasks", reason="pending_too_long") == 3, 20,
                       "stuck tasks on /metrics")
            pg.stop("immediate")
            t0 = time.monotonic()
            wait_until(lambda: get(metrics(port), "taskmedic_collector_up", collector="tasks:cape") == 0, 10,
                       "tasks collector down")
            assert time.monotonic() - t0 < 8  # interval 1s + timeout 2s, with room for a loaded machine
            m = metrics(port)
            assert get(m, "taskmedic_tasks", system="cape") is None  # its series are dropped, not stale
            assert get(m, "taskmedic_collector_up", collector=f"disk:{tmp}") == 1
            assert get(m, "taskmedic_disk_free_ratio", path=str(tmp)) is not None
            pg.start()
            wait_until(lambda: get(metrics(port), "taskmedic_collector_up", collector="tasks:cape") == 1, 20,
                       "tasks collector back without a restart")
            assert get(metrics(port), "taskmedic_stuck_tasks", reason="pending_too_long") == 3
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
    finally:
        pg.stop("immediate")
        shutil.rmtree(pg.root, ignore_errors=True)
    text = log.read_text()
    assert "collector failed" in text and "collector recovered" in text
    assert "pw-not-in-logs" not in text


def test_rows_that_disappear_take_their_stuck_count_to_zero(pg: PostgresServer, tmp: Path) -> None:
    name = pg.create_database()
    pg.psql_file(Path(__file__).parents[1] / "fixtures" / "cape.sql", db=name)
    pg.psql("insert into tasks (target, category, memory, enforce_timeout, clock, added_on, status, timedout) "
            "values ('x', 'file', false, false, localtimestamp, localtimestamp - interval '2 days', 'pending', false)",
            db=name)
    cfg = tmp / "taskmedic.yml"
    cfg.write_text(f"systems:\n  cape:\n    profile: cape\n    database: {pg.dsn(name)}\n    interval: 1s\n")
    port = free_port()
    with running([sys.executable, "-m", "exporter", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                 tmp / "log"):
        wait_http(f"http://127.0.0.1:{port}/healthz")
        wait_until(lambda: get(metrics(port), "taskmedic_stuck_tasks", reason="pending_too_long") == 1, 20, "stuck")
        pg.psql("update tasks set status = 'failed_analysis'", db=name)
        wait_until(lambda: get(metrics(port), "taskmedic_stuck_tasks", reason="pending_too_long") == 0, 20,
                   "stuck count back to zero")
        assert get(metrics(port), "taskmedic_tasks", status="pending") == 0


def test_openmetrics_negotiation_index_page_and_health(tmp: Path) -> None:
    cfg = tmp / "taskmedic.yml"
    cfg.write_text(f"disks:\n  - path: {tmp}\n")
    port = free_port()
    with running([sys.executable, "-m", "exporter", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                 tmp / "log"):
        wait_http(f"http://127.0.0.1:{port}/healthz")
        wait_until(lambda: "taskmedic_disk_free_ratio" in scrape(port)[1], 10, "disk metrics")
        ctype, body = scrape(port, "application/openmetrics-text; version=1.0.0")
        assert ctype.startswith("application/openmetrics-text") and body.rstrip().endswith("# EOF")
        ctype, body = scrape(port)
        assert ctype.startswith("text/plain")
        assert "# HELP taskmedic_disk_free_ratio" in body and "Refreshed every" in body
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            page = r.read().decode()
        assert "taskmedic exporter" in page and "/metrics" in page


def test_port_in_use_is_a_clear_error(tmp: Path) -> None:
    import socket
    import subprocess

    cfg = tmp / "taskmedic.yml"
    cfg.write_text(f"disks:\n  - path: {tmp}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "exporter", "--config", str(cfg), "--listen",
                              f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in res.stderr


def test_redis_outage_drops_only_the_queue_collector_and_recovers(tmp: Path) -> None:
    from tests.services import RedisServer

    rs = RedisServer(tempdir("taskmedic-redis-"))  # its own server: this test stops it
    rs.start()
    cfg = tmp / "taskmedic.yml"
    cfg.write_text(f"systems:\n  jobs:\n    profile: celery\n    redis: {rs.url(0)}\n    interval: 1s\n"
                   f"    timeout: 2s\ndisks:\n  - path: {tmp}\n    interval: 1s\n")
    port = free_port()
    try:
        with running([sys.executable, "-m", "exporter", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                     tmp / "log"):
            wait_http(f"http://127.0.0.1:{port}/healthz")
            wait_until(lambda: get(metrics(port), "taskmedic_queue_depth", queue="celery") == 0, 20, "celery depth")
            rs.stop()
            wait_until(lambda: get(metrics(port), "taskmedic_collector_up", collector="queues:jobs") == 0, 10,
                       "queue collector down")
            m = metrics(port)
            assert get(m, "taskmedic_queue_depth", queue="celery") is None
            assert get(m, "taskmedic_collector_up", collector=f"disk:{tmp}") == 1
            rs.start()  # same port
            import redis

            redis.Redis.from_url(rs.url(0)).rpush("celery", "m1", "m2")
            wait_until(lambda: get(metrics(port), "taskmedic_queue_depth", queue="celery") == 2, 20,
                       "queue collector back without a restart")
    finally:
        rs.stop()
        shutil.rmtree(rs.root, ignore_errors=True)
