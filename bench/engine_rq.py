"""Kill → detect for RQ (`worker_gone`; not a test, nothing asserts a time).

Each round, on a throwaway Redis: three real RQ workers (the default forking `Worker`, RQ's
DEFAULT timings: job_monitoring_interval 30 s, so a busy worker's key lives 90 s and is renewed
every 30 s), each running a long job on a queue of its own; the real `taskmedic-exporter` (rq
profile, worker_ttl_below 45 s, 1 s interval) watching them.
- the orphan: its parent is SIGKILLed first, its work horse (in its own process group) keeps
  running the job and holding the worker's pubsub channel; it must never count;
- the victim: 30-60 s later (at any point of its 30 s heartbeat cycle) its process group and its
  horse's are SIGKILLed, and /metrics is scraped every 100 ms until `worker_gone` rises, then
  10 s more;
- the twin stays alive; a count above 1 is a false positive (the twin or the orphan).
The comparison is RQ's own recovery, computed from its defaults (docs/engines.md, RQ): the
lease runs out 60-90 s after the kill (taskmedic's `abandoned`), and `StartedJobRegistry.cleanup`
runs at a live worker's next maintenance on that queue, every ~810 s for an idle worker
(maintenance_interval 600 s, checked once per 405 s dequeue timeout): up to 90 + 810 = 900 s.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import redis
from rq import Queue

from bench.liveness import kill_and_watch, summary
from bench.redis_rounds import rounds_on_redis
from deploy.local.servers import RedisServer
from tests.polling import wait_until
from tests.workers.rq_run import kill, rq_worker, started, unique

HEARTBEAT = 30.0  # rq/defaults.py DEFAULT_JOB_MONITORING_INTERVAL
LEASE = HEARTBEAT + 60  # the started-registry lease and the busy worker key's TTL
MAINTENANCE_EVERY = 810.0  # an idle worker's first dequeue wake-up past maintenance_interval (600 s): 2 x 405 s
RQ_RECOVERY = LEASE + MAINTENANCE_EVERY  # the worst case of RQ's own cleanup


def one_round(tmp: Path, rs: RedisServer, i: int) -> dict[str, float]:
    url = rs.url(i % 16)
    client = redis.Redis.from_url(url)
    client.flushdb()
    for role in ("victim", "twin", "orphan"):
        Queue(role, connection=client).enqueue("tests.workers.rq_jobs.slow", 600, job_id=role, job_timeout=900)
    cfg = tmp / f"rq-bench-{i}.yml"
    cfg.write_text(f"systems:\n  rq:\n    profile: rq\n    redis: {url}\n    interval: 1s\n")
    with rq_worker(url, unique("victim"), "victim", tmp) as victim, rq_worker(url, unique("twin"), "twin", tmp), \
            rq_worker(url, unique("orphan"), "orphan", tmp) as orphan:
        for role in ("victim", "twin", "orphan"):
            wait_until(lambda role=role: started(url, role), 60, f"the {role} worker to start its job")

        def crash() -> None:
            kill(orphan, with_horse=False)  # its key goes stale within 45 s, its channel stays held
            time.sleep(HEARTBEAT + random.uniform(0, HEARTBEAT))
            kill(victim)

        try:
            return kill_and_watch(cfg, tmp / f"rq-bench-{i}.log", "worker_gone", crash)
        finally:
            client.flushdb()


def measure(tmp: Path, rounds: int = 3) -> dict[str, Any]:
    runs = rounds_on_redis(tmp, "rq-bench-redis", one_round, rounds)
    out: dict[str, Any] = dict(summary(runs, RQ_RECOVERY))
    return out | {"detect_s": [round(r["detect_s"], 1) for r in runs], "lease_s": (LEASE - HEARTBEAT, LEASE)}


def report_line(m: dict[str, Any]) -> str:
    return (f"| RQ: SIGKILL of a busy worker and its work horse → "
            f"`taskmedic_stuck_tasks{{reason=\"worker_gone\"}} > 0` "
            f"(RQ's default 30 s heartbeat, worker_ttl_below 45 s, 1 s interval, {m['rounds']:.0f} rounds) | median "
            f"**{m['median_s']:.1f} s** (max {m['max_s']:.1f} s), {m['false_positives']:.0f} false positives on the "
            f"live twin and an orphaned work horse; the lease (`abandoned`): {m['lease_s'][0]:.0f}-"
            f"{m['lease_s'][1]:.0f} s; RQ's own cleanup: up to {m['recovery_s']:.0f} s (**{m['speedup']:.0f}x** "
            "later) | >= 10x sooner than the engine, 0 false positives |")


if __name__ == "__main__":
    from bench.engines import run  # imported here: bench.engines imports this module

    run("rq")
