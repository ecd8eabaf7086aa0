"""Real arq workers for the tests. arq pins redis-py below 6, which the project's venv outgrew, so
arq lives in a venv of its own under `.cache/engines/arq/venv`, installed on first use; workers
and the enqueuer run as subprocesses of that venv, with `tests/workers/arq/` as their folder.

What arq 0.28 keeps in Redis: the queue is a sorted set named
after the queue (score: enqueue time in ms); a job stays in it while it runs, held only by the
string `arq:in-progress:<id>` = "1" with a fixed TTL (job timeout + 10 s), which nothing renews
and nothing ties to a worker; the one liveness sign is the per-queue `<queue>:health-check`."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from taskmedic.connections import redis_text
from tests.polling import wait_until

ROOT = Path(__file__).parents[2]
SCRIPTS = Path(__file__).parent / "arq"
CACHE = ROOT / ".cache" / "engines" / "arq"
VENV = CACHE / "venv"
REQUIREMENT = "arq==0.28.0"  # the version the findings were read from
INSTALLED_MARKER = VENV / ".taskmedic-installed"

DEFAULT_QUEUE = "arq:queue"
# Written by the harness's own job and on_startup hook (tests/workers/arq/arq_jobs.py), never by arq.
STARTS_PREFIX = "arq-harness:starts:"
FINISHED_PREFIX = "arq-harness:finished:"
WORKER_PREFIX = "arq-harness:worker:"


def job_key(job_id: str) -> str:
    return f"arq:job:{job_id}"


def in_progress_key(job_id: str) -> str:
    return f"arq:in-progress:{job_id}"


def retry_key(job_id: str) -> str:
    return f"arq:retry:{job_id}"


def result_key(job_id: str) -> str:
    return f"arq:result:{job_id}"


def health_check_key(queue: str) -> str:
    return f"{queue}:health-check"


@contextmanager
def _install_lock() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _install() -> None:
    """A venv's scripts name its path, so it is built in place, under the lock, and marked done last."""
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
    pip = subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                          REQUIREMENT], capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        shutil.rmtree(VENV, ignore_errors=True)
        tail = (pip.stderr or pip.stdout).strip()[-800:]
        pytest.skip(f"cannot install {REQUIREMENT} from the package registry (pip exited {pip.returncode}): {tail}")
    INSTALLED_MARKER.write_text(REQUIREMENT + "\n")


def ensure_installed() -> Path:
    """The venv holding arq, installed once; safe when several test processes call it at once."""
    if _installed():
        return VENV
    with _install_lock():
        if not _installed():
            _install()
    return VENV


def _installed() -> bool:
    return INSTALLED_MARKER.is_file() and INSTALLED_MARKER.read_text().strip() == REQUIREMENT


def _bin(name: str) -> str:
    return str(ensure_installed() / "bin" / name)


def _client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def start_worker(redis_url: str, queue: str = DEFAULT_QUEUE, *, max_jobs: int = 10,
                 job_timeout: float | None = None, health_check_interval: float | None = None,
                 allow_abort_jobs: bool = False, log_path: Path | None = None,
                 timeout: float = 15) -> subprocess.Popen[bytes]:
    """`arq arq_jobs.WorkerSettings` in its own session (process group); returns once it has
    connected (its on_startup marker) and the queue's health-check key exists. Timeouts left as
    None keep arq's defaults (job timeout 300 s, health check every 3600 s)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARQ_HARNESS_")}
    env.update({"ARQ_HARNESS_REDIS_URL": redis_url, "ARQ_HARNESS_QUEUE": queue,
                "ARQ_HARNESS_MAX_JOBS": str(max_jobs), "ARQ_HARNESS_ALLOW_ABORT": "1" if allow_abort_jobs else "0"})
    if job_timeout is not None:
        env["ARQ_HARNESS_JOB_TIMEOUT"] = str(job_timeout)
    if health_check_interval is not None:
        env["ARQ_HARNESS_HEALTH_CHECK_INTERVAL"] = str(health_check_interval)
    env.pop("PYTHONPATH", None)
    proc = _launch([_bin("arq"), "arq_jobs.WorkerSettings"], env, log_path)
    try:
        _wait_ready(proc, redis_url, queue, timeout)
    except BaseException:
        kill(proc)
        raise
    return proc


def _launch(argv: list[str], env: dict[str, str], log_path: Path | None) -> subprocess.Popen[bytes]:
    if log_path is None:
        return subprocess.Popen(argv, cwd=SCRIPTS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                start_new_session=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, cwd=SCRIPTS, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait_ready(proc: subprocess.Popen[bytes], redis_url: str, queue: str, timeout: float) -> None:
    client = _client(redis_url)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"arq worker exited with {proc.returncode} before it was ready")
            return bool(client.exists(WORKER_PREFIX + str(proc.pid))) and bool(client.exists(health_check_key(queue)))
        wait_until(ready, timeout, f"arq worker {proc.pid} to connect and record health on {queue!r}")
    finally:
        client.close()


def enqueue_sleep(redis_url: str, queue: str, seconds: float) -> str:
    """Enqueues `sleep_job(seconds)` with arq's own client; returns the job id (uuid4 hex)."""
    done = subprocess.run([_bin("python"), str(SCRIPTS / "enqueue.py"), redis_url, queue, str(seconds)],
                          cwd=SCRIPTS, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


@dataclass(frozen=True)
class JobStart:
    pid: int
    job_try: int


def job_starts(redis_url: str, job_id: str) -> list[JobStart]:
    """Every start of the job so far, oldest first: which worker process, which try."""
    client = _client(redis_url)
    try:
        entries = client.lrange(STARTS_PREFIX + job_id, 0, -1)
    finally:
        client.close()
    return [JobStart(int(pid), int(job_try)) for pid, job_try in (redis_text(e).split(":") for e in entries)]


def job_finished(redis_url: str, job_id: str) -> bool:
    """Whether the job's body ran to its end (not cut by a timeout, abort or kill)."""
    client = _client(redis_url)
    try:
        return bool(client.exists(FINISHED_PREFIX + job_id))
    finally:
        client.close()


def wait_started(redis_url: str, job_id: str, *, times: int = 1, timeout: float = 15) -> list[JobStart]:
    return wait_until(lambda: job_starts(redis_url, job_id), timeout, f"job {job_id} to start {times} time(s)",
                      done=lambda starts: len(starts) >= times, interval=0.05)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """A graceful stop: SIGTERM to the worker's process group, waited for. arq's `Worker.close()`
    then deletes its queue's shared health-check key, whatever the other workers do."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        raise


def kill(proc: subprocess.Popen[bytes]) -> None:
    """A crash: SIGKILL to the worker's whole process group, then reaped."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
