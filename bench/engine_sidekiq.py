"""Kill → detect for Sidekiq (`python -m bench.engine_sidekiq`; not a test, nothing asserts a time).

Each round: two real Sidekiq 6.4 processes (tests/workers/sidekiq_harness.py, Debian's
ruby-sidekiq), each running a 300 s job, the real `taskmedic-exporter` (sidekiq profile, 1 s
interval) watching them; one is SIGKILLed (its process group) at a random point of its 5 s
heartbeat cycle, and /metrics is scraped every 100 ms until `taskmedic_stuck_tasks{reason="expiring"}`
rises, then 10 s more: any count above 1 is a false positive on the live twin.

Timings are Sidekiq's and the profile's defaults: Sidekiq 6.4 beats every 5 s (BEAT_PAUSE, not
configurable) and expires a process's `<identity>` and `<identity>:workers` 60 s after its last
beat; the profile's dead_after is 15 s. Sidekiq OSS never gives a killed process's job back (it
expires with `:workers`), so its own recovery time is never. The margin is what is left of the
60 s before that expiry when the job is first flagged: the `:workers` PTTL at the kill minus the
time to detect.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from pathlib import Path
from typing import Any

import redis

from bench.liveness import kill_and_watch, summary
from bench.redis_rounds import rounds_on_redis
from deploy.local.servers import RedisServer
from tests.workers import sidekiq_harness as sidekiq

QUEUE = "bench"
REASON = "expiring"
BEAT_PERIOD = 5.0  # Sidekiq 6.4 launcher.rb BEAT_PAUSE
DEAD_AFTER = 15.0  # the sidekiq profile's heartbeat.dead_after
EXPIRY = 60.0  # Sidekiq 6.4: EXPIRE 60 on both hashes at every beat


def one_round(tmp: Path, server: RedisServer, i: int) -> dict[str, float]:
    url = server.url()
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    with (tmp / f"sidekiq-bench-{i}-workers.log").open("wb") as log:
        workers = sidekiq.start_workers(url, QUEUE, 2, log=log)
    try:
        procs = {sidekiq.identity_of(url, proc): proc for proc in workers}
        jobs = {sidekiq.wait_started(url, jid, 30): jid
                for jid in [sidekiq.enqueue_sleep(url, QUEUE, 300) for _ in workers]}
        assert set(jobs) == set(procs), "each process runs one of the two jobs"
        for identity, jid in jobs.items():
            sidekiq.wait_held(url, identity, jid)
        victim = random.choice(sorted(procs))
        at_kill: dict[str, float] = {}

        def kill() -> None:
            time.sleep(random.uniform(0, BEAT_PERIOD))  # at any point of the victim's beat cycle
            seconds, micros = client.time()
            at_kill["beat_age_s"] = seconds + micros / 1e6 - float(client.hget(victim, "beat") or 0)
            at_kill["ttl_s"] = client.pttl(f"{victim}:workers") / 1000
            sidekiq.kill(procs[victim])

        cfg = tmp / f"sidekiq-bench-{i}.yml"
        cfg.write_text(f"systems:\n  sidekiq:\n    profile: sidekiq\n    redis: {url}\n    interval: 1s\n")
        run = kill_and_watch(cfg, tmp / f"sidekiq-bench-{i}.log", REASON, kill)
    finally:
        for proc in workers:
            sidekiq.kill(proc)
        client.flushdb()
        client.close()
    return {**run, **at_kill, "margin_s": at_kill["ttl_s"] - run["detect_s"]}


def measure(tmp: Path, rounds: int = 3) -> dict[str, Any]:
    runs = rounds_on_redis(tmp, "sidekiq-bench-redis", one_round, rounds)
    margins = [r["margin_s"] for r in runs]
    return {**summary(runs, None), "recovery_s": math.inf, "margin_median_s": statistics.median(margins),
            "margin_min_s": min(margins), "beat_age_at_kill_s": [round(r["beat_age_s"], 2) for r in runs],
            "beat_s": BEAT_PERIOD, "dead_after_s": DEAD_AFTER, "expiry_s": EXPIRY}


def report_line(m: dict[str, Any]) -> str:
    return (f"| Sidekiq 6.4: SIGKILL of a process running a job → `taskmedic_stuck_tasks{{reason=\"expiring\"}} > 0` "
            f"(1 s interval, Sidekiq's 5 s beat, the profile's dead_after {m['dead_after_s']:g} s, "
            f"{m['rounds']:.0f} rounds) | median **{m['median_s']:.1f} s** (max {m['max_s']:.1f} s), "
            f"{m['false_positives']:.0f} false positives on the live twin process; {m['margin_median_s']:.0f} s "
            f"left (min {m['margin_min_s']:.0f} s) before the job's only copy expires; Sidekiq OSS itself: never "
            "(the job is lost) | flagged well before the 60 s expiry, 0 false positives |")


if __name__ == "__main__":
    from bench.engines import run  # imported here: bench.engines imports this module

    run("sidekiq")
