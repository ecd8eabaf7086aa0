"""Real Celery workers for the liveness tests: prefork (its main process answers the pidbox while
a child runs the task, as Timesketch's workers do), one queue each, killed like a crash."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil

from tests.services import running

ROOT = Path(__file__).parents[2]


@contextmanager
def celery_worker(broker: str, name: str, queue: str, log_dir: Path) -> Iterator[psutil.Process]:
    argv = [sys.executable, "-m", "celery", "-A", "tests.workers.celery_app", "worker", "--pool=prefork",
            "--concurrency=1", "--loglevel=warning", "--without-mingle", "--without-gossip",
            "-n", f"{name}@%h", "-Q", queue]
    env = {"TASKMEDIC_TEST_BROKER": broker, "PYTHONPATH": str(ROOT)}
    with running(argv, log_dir / f"celery-{name}.log", env) as proc:
        worker = psutil.Process(proc.pid)
        try:
            yield worker
        finally:
            sigkill(worker)


def sigkill(worker: psutil.Process) -> None:
    """A crash: the worker and its pool children die at once, nothing acknowledged or cleaned up."""
    try:
        family = [*worker.children(recursive=True), worker]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        with suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=10)


def active_rows(broker: str) -> set[int]:
    """The timeline ids the live workers report working on, as `celery inspect active` shows them."""
    from celery import Celery

    app = Celery("probe", broker=broker, set_as_current=False)
    replies = app.control.inspect(timeout=1.0).active() or {}
    return {t["args"][5] if len(t["args"]) > 5 else t["kwargs"]["timeline_id"] for ts in replies.values() for t in ts}


def answers(broker: str) -> bool:
    """Whether any worker answers the pidbox (`celery inspect ping`)."""
    from celery import Celery

    app = Celery("probe", broker=broker, set_as_current=False)
    return bool(app.control.inspect(timeout=1.0).ping())
