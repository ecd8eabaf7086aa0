"""Real RQ workers (the default forking `Worker`) for the liveness tests and the benchmark, killed
like a crash. RQ forks each job's work horse into a process group of its own, so killing the
worker's process group leaves the horse running: `kill` says which of the two die."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import redis

from tests.polling import wait_until
from tests.services import running

ROOT = Path(__file__).parents[2]


@contextmanager
def rq_worker(url: str, name: str, queue: str, log_dir: Path,
              job_monitoring_interval: int | None = None) -> Iterator[psutil.Process]:
    """An RQ worker named `name` (made unique per run: Redis' pubsub channels are server-wide)
    in a session of its own, so everything it forks is found and killed after."""
    argv = [sys.executable, "-m", "rq.cli", "worker", "--url", url, "--name", name, queue]
    if job_monitoring_interval is not None:
        argv[4:4] = ["--job-monitoring-interval", str(job_monitoring_interval)]
    with running(argv, log_dir / f"rq-{name}.log", {"PYTHONPATH": str(ROOT)}, own_session=True) as proc:
        worker = psutil.Process(proc.pid)
        try:
            yield worker
        finally:
            kill_session(proc.pid)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def horse(worker: psutil.Process, timeout: float = 30) -> psutil.Process:
    """The work horse the worker forked for its current job."""
    children: list[psutil.Process] = wait_until(worker.children, timeout, "the worker to fork its work horse")
    return children[0]


def kill(worker: psutil.Process, with_horse: bool = True) -> psutil.Process | None:
    """SIGKILL the worker's process group (its parent); with its horse's group too, or not (then
    the horse, orphaned, is returned: it finishes its job)."""
    children = worker.children()
    with suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
    for child in children:
        if with_horse:
            with suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
    psutil.wait_procs([worker, *(children if with_horse else [])], timeout=10)
    return None if with_horse or not children else children[0]


def kill_session(sid: int) -> None:
    """SIGKILL every process of the session `sid` (a worker started in `own_session` and its
    horses, orphaned or not)."""
    family = []
    for proc in psutil.process_iter():
        with suppress(psutil.Error, ProcessLookupError):
            if os.getsid(proc.pid) == sid:
                family.append(proc)
    for proc in family:
        with suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=10)


def started(url: str, queue: str) -> int:
    return int(redis.Redis.from_url(url).zcard(f"rq:wip:{queue}"))
