"""The seed's 52-hour Harbor shape (SCENARIOS.md S3), next to its live twin, in real PostgreSQL and
Redis; and a gocraft-style worker pool process (deploy/local/gocraft_pool.py) to serve it.

- EXECUTION_SWEEP runs one at a time (`max_concurrency` 1). Execution 1's job `sweep-0` is in
  progress in pool `dead-pool`, whose last heartbeat is 52 h old; the pool still holds
  `jobs:EXECUTION_SWEEP:lock` 1 and `lock_info {dead-pool: 1}`, so `sweep-1..3` (executions 2-4,
  Pending) wait behind it.
- Execution 5 is a 13 h REPLICATION, in progress in `live-pool`, which heartbeats; its job_stats
  were updated 60 s ago.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

NS = "{harbor_job_service_namespace}"
P = NS + ":"
ROOT = Path(__file__).resolve().parents[2]


def job(name: str, job_id: str, hours_ago: float) -> str:
    return json.dumps({"name": name, "id": job_id, "t": int(time.time() - hours_ago * 3600), "args": {}})


def seed_52_hour_shape(sql: Callable[[str], object], r: redis.Redis) -> None:
    """Seed the shape; `sql` runs a statement on a database with Harbor's tables (harbor.sql)."""
    sql("""insert into execution (id, vendor_type, status, trigger, start_time) values
                (1, 'EXECUTION_SWEEP', 'Running', 'SCHEDULE', now() - interval '52 hours'),
                (2, 'EXECUTION_SWEEP', 'Pending', 'SCHEDULE', now() - interval '51 hours'),
                (3, 'EXECUTION_SWEEP', 'Pending', 'SCHEDULE', now() - interval '27 hours'),
                (4, 'EXECUTION_SWEEP', 'Pending', 'SCHEDULE', now() - interval '3 hours'),
                (5, 'REPLICATION', 'Running', 'MANUAL', now() - interval '13 hours');
              insert into task (execution_id, job_id, status, status_code, vendor_type, start_time) values
                (1, 'sweep-0', 'Running', 2, 'EXECUTION_SWEEP', now() - interval '52 hours'),
                (2, 'sweep-1', 'Pending', 0, 'EXECUTION_SWEEP', null),
                (3, 'sweep-2', 'Pending', 0, 'EXECUTION_SWEEP', null),
                (4, 'sweep-3', 'Pending', 0, 'EXECUTION_SWEEP', null),
                (5, 'rep-1', 'Running', 2, 'REPLICATION', now() - interval '13 hours')""")
    now = int(time.time())
    r.sadd(P + "known_jobs", "EXECUTION_SWEEP", "REPLICATION")
    r.set(P + "jobs:EXECUTION_SWEEP:max_concurrency", 1)
    r.sadd(P + "worker_pools", "dead-pool")
    r.hset(P + "worker_pools:dead-pool", mapping={"heartbeat_at": now - 52 * 3600, "started_at": now - 60 * 3600,
                                                   "job_names": "EXECUTION_SWEEP,REPLICATION", "concurrency": 10})
    r.lpush(P + "jobs:EXECUTION_SWEEP:dead-pool:inprogress", job("EXECUTION_SWEEP", "sweep-0", 52))
    r.set(P + "jobs:EXECUTION_SWEEP:lock", 1)
    r.hset(P + "jobs:EXECUTION_SWEEP:lock_info", "dead-pool", 1)
    for i, hours in ((1, 51), (2, 27), (3, 3)):  # pushed left, taken from the right: sweep-1 is the oldest
        r.lpush(P + "jobs:EXECUTION_SWEEP", job("EXECUTION_SWEEP", f"sweep-{i}", hours))
    r.lpush(P + "jobs:REPLICATION:live-pool:inprogress", job("REPLICATION", "rep-1", 13))
    r.set(P + "jobs:REPLICATION:lock", 1)
    r.hset(P + "jobs:REPLICATION:lock_info", "live-pool", 1)
    r.hset(P + "job_track:inprogress", mapping={"sweep-0": 1, "rep-1": 1})
    r.hset(P + "job_stats:sweep-0", mapping={"status": "Running", "update_time": now - 52 * 3600})
    r.hset(P + "job_stats:rep-1", mapping={"status": "Running", "update_time": now - 60})


def start_pool(redis_url: str, pool: str = "live-pool", work: float = 0.2) -> subprocess.Popen[bytes]:
    """The live pool: serves EXECUTION_SWEEP (one at a time) and REPLICATION, heartbeating every second."""
    return subprocess.Popen([sys.executable, "-m", "deploy.local.gocraft_pool", redis_url, NS, pool,
                             "EXECUTION_SWEEP=1,REPLICATION=0", "--work", str(work)], cwd=ROOT)


def wait_for_heartbeat(r: redis.Redis, pool: str = "live-pool", timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not r.hexists(f"{P}worker_pools:{pool}", "heartbeat_at"):
        assert time.monotonic() < end, f"pool {pool} never heartbeat"
        time.sleep(0.05)
