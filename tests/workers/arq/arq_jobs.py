"""Jobs and worker settings for real arq workers in the tests. Runs inside arq's own venv
(`.cache/engines/arq/venv`), started as `arq arq_jobs.WorkerSettings` with this folder as cwd;
the settings come from the environment so one module serves every worker a test starts."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from arq.connections import RedisSettings

# Written by the jobs themselves, never by arq: one list per job id, one "pid:job_try" per start.
STARTS_PREFIX = "arq-harness:starts:"
FINISHED_PREFIX = "arq-harness:finished:"
# Written by on_startup, so a test knows this worker process has connected.
WORKER_PREFIX = "arq-harness:worker:"


async def sleep_job(ctx: dict[str, Any], seconds: float) -> str:
    redis = ctx["redis"]
    job_id = ctx["job_id"]
    await redis.rpush(STARTS_PREFIX + job_id, f"{os.getpid()}:{ctx['job_try']}")
    await asyncio.sleep(seconds)
    await redis.set(FINISHED_PREFIX + job_id, str(os.getpid()))
    return "slept"


async def announce(ctx: dict[str, Any]) -> None:
    await ctx["redis"].set(WORKER_PREFIX + str(os.getpid()), "started")


def _optional_float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


class WorkerSettings:
    functions = [sleep_job]
    on_startup = announce
    redis_settings = RedisSettings.from_dsn(os.environ["ARQ_HARNESS_REDIS_URL"])
    queue_name = os.environ.get("ARQ_HARNESS_QUEUE", "arq:queue")
    max_jobs = int(os.environ.get("ARQ_HARNESS_MAX_JOBS", "10"))
    job_timeout = _optional_float("ARQ_HARNESS_JOB_TIMEOUT") or 300
    health_check_interval = _optional_float("ARQ_HARNESS_HEALTH_CHECK_INTERVAL") or 3600
    health_check_key = os.environ.get("ARQ_HARNESS_HEALTH_CHECK_KEY") or None
    allow_abort_jobs = os.environ.get("ARQ_HARNESS_ALLOW_ABORT") == "1"
