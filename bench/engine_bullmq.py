"""Kill → detect for BullMQ (`python -m bench.engine_bullmq`; not part of `python -m bench`, and
not a test: nothing asserts a time).

Each round: two real BullMQ 6.7 workers (tests/workers/bullmq_harness.py) at BullMQ's defaults
(lockDuration 30 s, renewed every ~7.5 s; stalledInterval 30 s; maxStalledCount 1), each running
a 10-minute job of one queue; the real `taskmedic-exporter` (bullmq profile, 1 s interval)
watching them. The victim is SIGKILLed (its whole process group) and the bench times
`taskmedic_stuck_tasks{system="bq",reason="stalled"} > 0` (bench/liveness.py's kill_and_watch:
/metrics every 100 ms, then 10 s more, any count above 1 a false positive on the live twin).
The kill falls at a random point of the victim's lock renewal cycle (every ~7.5 s); the dead
worker's lock outlives it by what was left of its PX (22.5-30 s), which is most of the time.

Then the exporter stops and the bench waits for BullMQ's own recovery: the twin's stalled checker
moving the job back to wait (`stc` 1; the twin is busy, so the job stays there), timed from the
same kill. A round where BullMQ moved the job before the exporter saw it stalled counts as
`engine_first` (its detect time is kill_and_watch's 120 s limit and is left out of the median).
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path
from typing import Any

import redis

from bench.liveness import kill_and_watch
from bench.redis_rounds import rounds_on_redis
from deploy.local.servers import RedisServer
from tests.polling import wait_until
from tests.workers import bullmq_harness as bullmq

QUEUE = "renders"
DEFAULTS = {"lock_duration_ms": 30_000, "stalled_interval_ms": 30_000, "max_stalled_count": 1}  # BullMQ's own
FINDINGS_RECOVERY_S = (55.7, 42.7)  # findings/bullmq.md §6: SIGKILL → taken by a live worker, defaults
RENEWAL_S = 7.5  # the holder renews its lock every ~lockDuration / 4
JOB_S = 600
WATCH_LIMIT_S = 120  # kill_and_watch gives up after this


def one_round(tmp: Path, rs: RedisServer, i: int) -> dict[str, Any]:
    url = rs.url(0)
    r = redis.Redis.from_url(url)
    r.flushdb()
    workers: list[bullmq.WorkerProcess] = []
    try:
        victim = bullmq.start_worker(url, QUEUE, name="victim", **DEFAULTS)
        workers.append(victim)
        victim_job = bullmq.enqueue_sleep(url, QUEUE, JOB_S)
        bullmq.wait_held(url, QUEUE, victim_job)
        twin = bullmq.start_worker(url, QUEUE, name="twin", **DEFAULTS)
        workers.append(twin)
        twin_job = bullmq.enqueue_sleep(url, QUEUE, JOB_S)
        assert bullmq.wait_held(url, QUEUE, twin_job).holder == twin.worker_id
        time.sleep(random.uniform(0, RENEWAL_S))  # kill at any point of the victim's lock renewal cycle
        cfg = tmp / f"bullmq-bench-{i}.yml"
        cfg.write_text(f"systems:\n  bq:\n    profile: bullmq\n    redis: {url}\n    interval: 1s\n")
        at_kill: dict[str, float] = {}

        def kill() -> None:
            at_kill["lock_left_s"] = max(int(r.pttl(bullmq.lock_key(QUEUE, victim_job))), 0) / 1000
            bullmq.kill(victim)
            at_kill["at"] = time.monotonic()

        watched = kill_and_watch(cfg, tmp / f"bullmq-bench-{i}.log", "stalled", kill)
        moved = wait_until(lambda: bullmq.job_state(url, QUEUE, victim_job), 150, "BullMQ's own stalled checker",
                           done=lambda s: not s.in_active and s.stalled_count >= 1, interval=0.05)
        recovery = time.monotonic() - at_kill["at"]
        twin_now = bullmq.job_state(url, QUEUE, twin_job)
        assert moved.in_wait and twin_now.in_active and twin_now.holder == twin.worker_id
        return {**watched, "lock_left_s": at_kill["lock_left_s"], "recovery_s": recovery,
                "engine_first": watched["detect_s"] >= WATCH_LIMIT_S}
    finally:
        for worker in workers:
            bullmq.kill(worker)
        r.flushdb()
        r.close()


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    seen = [r["detect_s"] for r in runs if not r["engine_first"]]
    recovery = [r["recovery_s"] for r in runs]
    out: dict[str, Any] = {
        "rounds": len(runs), "engine_first": sum(r["engine_first"] for r in runs),
        "median_s": statistics.median(seen) if seen else None, "max_s": max(seen) if seen else None,
        "false_positives": sum(r["false_positives"] + max(r["before"], 0) for r in runs),
        "lock_left_s": [round(r["lock_left_s"], 1) for r in runs],
        "detect_s": [round(r["detect_s"], 1) for r in runs],
        "recovery_s": [round(s, 1) for s in recovery], "recovery_median_s": statistics.median(recovery),
        "findings_recovery_s": list(FINDINGS_RECOVERY_S), "timings": DEFAULTS}
    if seen:
        out["speedup"] = statistics.median(recovery) / statistics.median(seen)
    return out


def measure(tmp: Path, rounds: int = 3) -> dict[str, Any]:
    bullmq.ensure_installed()
    return summary(rounds_on_redis(tmp, "redis", one_round, rounds))


def report_line(m: dict[str, Any]) -> str:
    if m["median_s"] is None:
        return f"| BullMQ 6.7: in all {m['rounds']} rounds BullMQ's stalled checker moved the job before it was seen |"
    first = f", {m['engine_first']} of them recovered by BullMQ first" if m["engine_first"] else ""
    return (f"| BullMQ 6.7: SIGKILL of a worker running a job → `taskmedic_stuck_tasks{{reason=\"stalled\"}} > 0` "
            f"(1 s interval, BullMQ's defaults: lockDuration 30 s, stalledInterval 30 s; {m['rounds']} rounds{first}) "
            f"| median **{m['median_s']:.1f} s** (max {m['max_s']:.1f} s: the dead worker's lock lives out its PX), "
            f"{m['false_positives']:.0f} false positives on the live twin worker; BullMQ's own stalled checker: "
            f"median {m['recovery_median_s']:.0f} s with a live worker on the queue (**{m['speedup']:.1f}x** later), "
            "never without | flagged as soon as the lock expires, 0 false positives |")


if __name__ == "__main__":
    from bench.engines import run  # imported here: bench.engines imports this module

    run("bullmq", remove_tmp=True)
