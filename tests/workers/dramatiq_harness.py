"""Real dramatiq workers (Redis broker) for taskmedic's tests.

dramatiq is installed once into its own venv, `.cache/engines/dramatiq/`, not the project's: its
redis-py pin may conflict with ours. Workers are that venv's `dramatiq` command running
tests/workers/dramatiq/actors.py, one process (`--processes 1`) in a session of its own, so a
crash is a SIGKILL of the whole process group. Jobs push the broker id of the worker running them
on marker lists, `taskmedic-harness:dramatiq:<redis_message_id>:started` / `:finished`, and the same
under `message:<message_id>` (a delayed message gets a new redis id when it moves to its queue).

Where dramatiq keeps work (docs/engines.md), with the default namespace `dramatiq`:
`dramatiq:<queue>` list of redis message ids (RPUSH in, LPOP out), `dramatiq:<queue>.msgs` hash id ->
JSON message, `dramatiq:__acks__.<broker id>.<queue>` set of the ids a worker process fetched and
has not acked, `dramatiq:__heartbeats__` zset broker id -> last command's time in ms (worker clock).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from taskmedic.connections import redis_text
from tests.polling import wait_until

ROOT = Path(__file__).parents[2]
ENGINE_DIR = ROOT / ".cache" / "engines" / "dramatiq"
SCRIPTS = Path(__file__).parent / "dramatiq"
REQUIREMENT = "dramatiq[redis]==2.2.1"
INSTALLED_MARK = ENGINE_DIR / ".installed"

NAMESPACE = "dramatiq"
HEARTBEATS = f"{NAMESPACE}:__heartbeats__"
MARKERS = "taskmedic-harness:dramatiq:"


def queue_key(queue: str) -> str:
    return f"{NAMESPACE}:{queue}"


def messages_key(queue: str) -> str:
    return f"{NAMESPACE}:{queue}.msgs"


def acks_key(broker_id: str, queue: str) -> str:
    return f"{NAMESPACE}:__acks__.{broker_id}.{queue}"


def delay_queue(queue: str) -> str:
    """Where dramatiq keeps `queue`'s delayed messages until their eta (a queue of its own)."""
    return f"{queue}.DQ"


def dead_letters_key(queue: str) -> str:
    """The sorted set of `queue`'s dead-lettered message ids (not a queue of work)."""
    return f"{NAMESPACE}:{queue}.XQ"


@dataclass(frozen=True)
class Sent:
    message_id: str  # stays the same when a delayed message moves to its queue
    redis_message_id: str  # the member of the queue list, `.msgs` hash and acks sets


@dataclass(frozen=True)
class DramatiqWorker:
    """A `dramatiq` command (main process + one worker process) and the broker id its worker
    process heartbeats and holds acks under."""

    proc: subprocess.Popen[bytes]
    broker_id: str
    log: Path


def ensure_installed() -> Path:
    """The bin/ directory of dramatiq's venv, installing it first if missing (once, under a file lock)."""
    if INSTALLED_MARK.exists():
        return ENGINE_DIR / "bin"
    ENGINE_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(ENGINE_DIR.parent / "dramatiq.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not INSTALLED_MARK.exists():
            _install()
    return ENGINE_DIR / "bin"


def _install() -> None:
    # A venv cannot be moved once made (its scripts name their interpreter), so an unfinished one
    # (no mark) is removed and made again in place; the lock keeps other processes out meanwhile.
    shutil.rmtree(ENGINE_DIR, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(ENGINE_DIR)], check=True)
    pip = subprocess.run([str(ENGINE_DIR / "bin" / "pip"), "install", "-q", REQUIREMENT],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        shutil.rmtree(ENGINE_DIR, ignore_errors=True)
        pytest.skip(f"cannot install {REQUIREMENT} (package registry unreachable?): {pip.stderr[-500:]}")
    INSTALLED_MARK.touch()


def _engine_env(redis_url: str, queue: str) -> dict[str, str]:
    return {**os.environ, "TASKMEDIC_DRAMATIQ_REDIS_URL": redis_url, "TASKMEDIC_DRAMATIQ_QUEUE": queue}


def start_worker(redis_url: str, queue: str, *, threads: int = 1, prefetch: int | None = 1,
                 heartbeat_timeout_ms: int | None = None, maintenance_chance: int | None = None,
                 log_dir: Path | None = None) -> DramatiqWorker:
    """A worker process consuming `queue`, returned once its broker id is in the heartbeats zset.

    `prefetch` is how many messages it fetches (holds in its acks set) at once, running or not;
    1 makes it hold exactly the job it runs. None keeps dramatiq's default, 2 x threads.
    `heartbeat_timeout_ms` and `maintenance_chance` (per million calls; 0: never) tune the
    RedisBroker's own recovery, its "maintenance"; None keeps dramatiq's defaults (60000, 1000)."""
    bin_dir = ensure_installed()
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="taskmedic-dramatiq-"))
    id_file = log_dir / f"worker-{os.urandom(4).hex()}.id"
    log = id_file.with_suffix(".log")
    env = _engine_env(redis_url, queue) | {"TASKMEDIC_DRAMATIQ_ID_FILE": str(id_file)}
    if prefetch is not None:
        env["dramatiq_queue_prefetch"] = str(prefetch)
    if heartbeat_timeout_ms is not None:
        env["TASKMEDIC_DRAMATIQ_HEARTBEAT_TIMEOUT"] = str(heartbeat_timeout_ms)
    if maintenance_chance is not None:
        env["TASKMEDIC_DRAMATIQ_MAINTENANCE_CHANCE"] = str(maintenance_chance)
    argv = [str(bin_dir / "dramatiq"), "actors", "--path", str(SCRIPTS), "--processes", "1",
            "--threads", str(threads), "--queues", queue]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        broker_id = wait_until(lambda: _read_id(id_file, proc, log), 30, f"dramatiq worker's broker id in {id_file}")
        client = redis.Redis.from_url(redis_url)
        with client:
            wait_until(lambda: client.zscore(HEARTBEATS, broker_id) is not None, 30, f"{broker_id} in {HEARTBEATS}")
    except BaseException:
        kill(proc)
        raise
    return DramatiqWorker(proc, broker_id, log)


def _read_id(id_file: Path, proc: subprocess.Popen[bytes], log: Path) -> str:
    if proc.poll() is not None:
        raise AssertionError(f"dramatiq worker exited with {proc.returncode}: {log.read_text()[-2000:]}")
    return id_file.read_text() if id_file.exists() else ""


def _send(redis_url: str, queue: str, *args: str) -> list[Sent]:
    bin_dir = ensure_installed()
    result = subprocess.run([str(bin_dir / "python"), str(SCRIPTS / "enqueue.py"), *args],
                            env=_engine_env(redis_url, queue), capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"enqueue failed: {result.stderr[-2000:]}")
    return [Sent(**json.loads(line)) for line in result.stdout.splitlines()]


def enqueue_sleeps(redis_url: str, queue: str, *seconds: float) -> list[str]:
    """Send one `sleep(s)` message per value through the real broker; their redis message ids
    (members of the queue list, the `.msgs` hash and the acks sets), in order."""
    return [sent.redis_message_id for sent in _send(redis_url, queue, *map(str, seconds))]


def enqueue_delayed_sleep(redis_url: str, queue: str, seconds: float, delay_ms: int) -> Sent:
    """A `sleep(seconds)` message delayed by `delay_ms`: it waits in `<queue>.DQ` (a worker's
    delay-queue consumer fetches it at once and holds it in its `<queue>.DQ` acks set until its eta,
    then enqueues it to `queue` under a new redis message id)."""
    (sent,) = _send(redis_url, queue, "--delay", str(delay_ms), str(seconds))
    return sent


def enqueue_failure(redis_url: str, queue: str) -> str:
    """A `fail()` message (no retries): once a worker runs it, a dead letter in `<queue>.XQ`."""
    (sent,) = _send(redis_url, queue, "--fail")
    return sent.redis_message_id


def enqueue_sleep(redis_url: str, queue: str, seconds: float) -> str:
    return enqueue_sleeps(redis_url, queue, seconds)[0]


def purge(redis_url: str, queue: str) -> None:
    """dramatiq's own `broker.flush(queue)`: the queue's waiting ids and every message of it
    (`.msgs`) are deleted, but the ids that workers hold stay in their acks sets."""
    bin_dir = ensure_installed()
    subprocess.run([str(bin_dir / "python"), str(SCRIPTS / "purge.py"), queue],
                   env=_engine_env(redis_url, queue), check=True, capture_output=True, timeout=60)


def started_by(client: redis.Redis, job_id: str) -> list[str]:
    """Broker ids of the workers that started the job, in order (a requeued job starts again)."""
    return [redis_text(member) for member in client.lrange(f"{MARKERS}{job_id}:started", 0, -1)]


def finished_by(client: redis.Redis, job_id: str) -> list[str]:
    return [redis_text(member) for member in client.lrange(f"{MARKERS}{job_id}:finished", 0, -1)]


def message_started_by(client: redis.Redis, message_id: str) -> list[str]:
    """`started_by` for a message id (a delayed message runs under a redis id of its own)."""
    return started_by(client, f"message:{message_id}")


def message_finished_by(client: redis.Redis, message_id: str) -> list[str]:
    return finished_by(client, f"message:{message_id}")


def wait_started(client: redis.Redis, job_id: str, timeout: float = 20) -> str:
    """The broker id of the worker that first started the job, once it has."""
    return wait_until(lambda: started_by(client, job_id), timeout, f"dramatiq job {job_id} to start")[0]


def kill(worker: DramatiqWorker | subprocess.Popen[bytes]) -> None:
    """A crash: SIGKILL to the whole process group, returning once no process of it is left."""
    proc = worker.proc if isinstance(worker, DramatiqWorker) else worker
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_until(lambda: not _group_alive(proc.pid), 10, f"process group {proc.pid} to die")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def workers(redis_url: str, queue: str, count: int, *, threads: int = 1, prefetch: int | None = 1,
            log_dir: Path | None = None) -> Iterator[list[DramatiqWorker]]:
    """`count` workers on `queue`, killed after the `with` whatever happened."""
    started: list[DramatiqWorker] = []
    try:
        for _ in range(count):
            started.append(start_worker(redis_url, queue, threads=threads, prefetch=prefetch, log_dir=log_dir))
        yield started
    finally:
        for worker in started:
            kill(worker)


class Pool:
    """Workers started one by one as a test needs them (all with the same options, those of
    `start_worker`, unless given), each SIGKILLed by `close`."""

    def __init__(self, redis_url: str, queue: str, log_dir: Path, **options: Any) -> None:
        self.redis_url, self.queue, self.log_dir, self.options = redis_url, queue, log_dir, options
        self.started: list[DramatiqWorker] = []

    def start(self, **options: Any) -> DramatiqWorker:
        worker = start_worker(self.redis_url, self.queue, log_dir=self.log_dir, **(self.options | options))
        self.started.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.started:
            kill(worker)
