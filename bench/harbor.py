"""Kill → detect for Harbor (`python -m bench` runs it; not a test, nothing asserts a time).

Two gocraft-style worker pools (deploy/local/gocraft_pool.py, heartbeat every 5 s like gocraft)
each run a 13-hour REPLICATION. The real `taskmedic-exporter` (harbor profile, 1 s interval)
watches them. One pool is SIGKILLed, and the bench measures how long `taskmedic_stuck_tasks{reason="worker_gone"}`
takes to rise. The other pool is the live twin; any count above 1 would be a false positive.
The comparison is the engine's own recovery: gocraft's dead pool reaper runs every 10 min (+ up
to 30 s of jitter), and the former age rule flagged a Running execution after 12 h.
"""

from __future__ import annotations

import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis

from bench.liveness import stuck as stuck_of
from deploy.local.harbor_shape import NS, ROOT, P, job
from deploy.local.servers import PostgresServer, RedisServer, free_port, running, wait_http

REAPER_PERIOD = 600.0  # gocraft dead_pool_reaper.go: reapPeriod


def stuck(url: str) -> float:
    return stuck_of(url, "worker_gone")


def pool(url: str, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "deploy.local.gocraft_pool", url, NS, name, "REPLICATION=0",
                             "--work", "3600", "--beat", "5"], cwd=ROOT)


def take(r: redis.Redis, url: str, name: str, job_id: str) -> subprocess.Popen[bytes]:
    """Start pool `name` and let it take job `job_id` (in its in-progress list)."""
    proc = pool(url, name)
    r.lpush(P + "jobs:REPLICATION", job("REPLICATION", job_id, 13))
    end = time.monotonic() + 20
    while not r.llen(f"{P}jobs:REPLICATION:{name}:inprogress"):
        assert time.monotonic() < end, f"pool {name} did not take {job_id}"
        time.sleep(0.05)
    return proc


def one_round(tmp: Path, pg: PostgresServer, rs: RedisServer, i: int) -> dict[str, float]:
    db = pg.create_database("harbor_bench")
    pg.psql_file(ROOT / "tests" / "fixtures" / "harbor.sql", db=db)
    pg.psql("insert into execution (id, vendor_type, status, trigger, start_time) values "
            "(1, 'REPLICATION', 'Running', 'MANUAL', now() - interval '13 hours'), "
            "(2, 'REPLICATION', 'Running', 'MANUAL', now() - interval '13 hours');"
            "insert into task (execution_id, job_id, status, status_code, vendor_type) values "
            "(1, 'rep-killed', 'Running', 2, 'REPLICATION'), (2, 'rep-live', 'Running', 2, 'REPLICATION')", db=db)
    url = rs.url(3)
    r = redis.Redis.from_url(url)
    r.flushdb()
    victim, twin = take(r, url, "pool-killed", "rep-killed"), take(r, url, "pool-live", "rep-live")
    cfg = tmp / f"harbor-bench-{i}.yml"
    cfg.write_text(f"systems:\n  harbor:\n    profile: harbor\n    database: {pg.dsn(db)}\n    redis: {url}\n"
                   "    interval: 1s\n")
    port = free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    try:
        with running([sys.executable, "-m", "exporter", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                     tmp / f"harbor-bench-{i}.log"):
            wait_http(metrics)
            end = time.monotonic() + 15
            while stuck(metrics) != 0 and time.monotonic() < end:  # both alive: 0 stuck
                time.sleep(0.1)
            before = stuck(metrics)
            time.sleep(random.uniform(0, 5))  # kill at any point of the 5 s heartbeat cycle
            victim.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            while (seen := stuck(metrics)) < 1 and time.monotonic() - killed < 120:
                time.sleep(0.1)
            detect = time.monotonic() - killed
            worst = seen
            watch = time.monotonic() + 10  # the live twin must stay out of the count
            while time.monotonic() < watch:
                worst = max(worst, stuck(metrics))
                time.sleep(0.2)
    finally:
        for proc in (victim, twin):
            proc.kill()
            proc.wait()
        r.flushdb()
    return {"detect_s": detect, "before": before, "false_positives": max(worst - 1, 0)}


def measure(tmp: Path, pg: PostgresServer, rs: RedisServer, rounds: int = 5) -> dict[str, float]:
    runs = [one_round(tmp, pg, rs, i) for i in range(rounds)]
    detect = [r["detect_s"] for r in runs]
    return {"median_s": statistics.median(detect), "max_s": max(detect), "rounds": rounds,
            "false_positives": sum(r["false_positives"] + max(r["before"], 0) for r in runs),
            "reaper_s": REAPER_PERIOD, "speedup": REAPER_PERIOD / statistics.median(detect)}


def report_line(h: dict[str, float]) -> str:
    return (f"| Harbor: SIGKILL of a job-service worker pool → `taskmedic_stuck_tasks{{reason=\"worker_gone\"}} > 0` "
            f"(1 s interval, gocraft's 5 s heartbeat, {h['rounds']:.0f} rounds) | median **{h['median_s']:.1f} s** "
            f"(max {h['max_s']:.1f} s), {h['false_positives']:.0f} false positives on the live twin pool; gocraft's "
            f"own dead pool reaper: every {h['reaper_s'] / 60:.0f} min (**{h['speedup']:.0f}x** later); the former "
            "age rule: 12 h | >= 10x sooner than the engine, 0 false positives |")
