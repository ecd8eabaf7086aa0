"""Real BullMQ workers for the tests. BullMQ is a Node.js library: it is installed once, at the versions
pinned in tests/workers/bullmq/package.json, into .cache/engines/bullmq; workers and producers are the
small scripts beside that package.json. Job state is read from Redis where BullMQ keeps it:
`bull:<queue>:active` (list of job ids being run), `bull:<queue>:<id>:lock` (the holder's token, with a
PX expiry the holder keeps renewing), `bull:<queue>:<id>` (the job hash)."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.polling import wait_until

ROOT = Path(__file__).parents[2]
SCRIPTS = Path(__file__).parent / "bullmq"
ENGINE_DIR = ROOT / ".cache" / "engines" / "bullmq"
PREFIX = "bull"  # BullMQ's default key prefix; the scripts do not change it
NETWORK_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH",
                  "EHOSTUNREACH", "network")


def pinned_versions() -> dict[str, str]:
    dependencies: dict[str, str] = json.loads((SCRIPTS / "package.json").read_text())["dependencies"]
    return dependencies


def _installed(directory: Path, pins: dict[str, str]) -> bool:
    for package, version in pins.items():
        manifest = directory / "node_modules" / package / "package.json"
        if not manifest.exists() or json.loads(manifest.read_text()).get("version") != version:
            return False
    return True


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _npm_install(npm: str, directory: Path) -> None:
    """Install the pinned packages into `directory`; skip the test when the registry cannot be reached."""
    shutil.copy(SCRIPTS / "package.json", directory / "package.json")
    try:
        result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=directory,
                                capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip("npm install of BullMQ took over 300 s: is the npm registry reachable?")
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-2000:]
        if any(error in output for error in NETWORK_ERRORS):
            pytest.skip(f"cannot install BullMQ: the npm registry is unreachable ({output.strip()[-300:]})")
        raise RuntimeError(f"npm install of BullMQ failed:\n{output}")


def ensure_installed() -> Path:
    """The directory BullMQ is installed in (the scripts' BULLMQ_HOME), installing it on first use.
    Safe when several test processes call it at once: one installs under a file lock, into a fresh
    directory renamed into place when complete."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.skip("BullMQ needs Node.js and npm on PATH")
    pins = pinned_versions()
    if _installed(ENGINE_DIR, pins):
        return ENGINE_DIR
    ENGINE_DIR.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(ENGINE_DIR.parent / "bullmq.lock"):
        if _installed(ENGINE_DIR, pins):
            return ENGINE_DIR
        staging = Path(tempfile.mkdtemp(prefix="bullmq.installing.", dir=ENGINE_DIR.parent))
        staging.chmod(0o755)
        try:
            _npm_install(npm, staging)
            if ENGINE_DIR.exists():  # another pin, or a broken earlier install
                shutil.rmtree(ENGINE_DIR)
            staging.rename(ENGINE_DIR)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return ENGINE_DIR


def _node_env() -> dict[str, str]:
    return {**os.environ, "BULLMQ_HOME": str(ensure_installed())}


def key(queue: str, suffix: str) -> str:
    """A queue's key, e.g. key("renders", "active") == "bull:renders:active"."""
    return f"{PREFIX}:{queue}:{suffix}"


def lock_key(queue: str, job_id: str) -> str:
    return key(queue, f"{job_id}:lock")


def worker_connection_name(queue: str, name: str) -> str:
    """The CLIENT SETNAME of a named worker's blocking connection (the one Queue.getWorkers finds)."""
    return f"{PREFIX}:{base64.b64encode(queue.encode()).decode()}:w:{name}"


class WorkerProcess(subprocess.Popen[str]):
    """A BullMQ worker process. `worker_id` is BullMQ's Worker.id: every lock token it writes is
    "<worker_id>:<n>". `events` collects the JSON lines it prints (ready, active, completed, stalled...)."""

    worker_id: str
    name: str
    events: list[dict[str, Any]]

    def follow_events(self) -> None:
        self.events = []
        assert self.stdout is not None
        stdout = self.stdout

        def read() -> None:
            for line in stdout:
                with contextlib.suppress(json.JSONDecodeError):
                    self.events.append(json.loads(line))

        threading.Thread(target=read, daemon=True).start()


def _registered_names(redis_url: str) -> set[str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return {entry.get("name", "") for entry in client.client_list()}
    finally:
        client.close()


def start_worker(redis_url: str, queue: str, *, name: str | None = None, lock_duration_ms: int = 30000,
                 stalled_interval_ms: int = 30000, max_stalled_count: int = 1, concurrency: int = 1,
                 timeout: float = 30) -> WorkerProcess:
    """A worker in its own process group running `queue`'s jobs, BullMQ's defaults unless told.
    Returns once it has said ready and its named connection shows in CLIENT LIST."""
    name = name or f"taskmedic-{os.urandom(4).hex()}"
    argv = ["node", str(SCRIPTS / "worker.mjs"), redis_url, queue, "--name", name,
            "--lock-duration", str(lock_duration_ms), "--stalled-interval", str(stalled_interval_ms),
            "--max-stalled-count", str(max_stalled_count), "--concurrency", str(concurrency)]
    proc = WorkerProcess(argv, env=_node_env(), stdout=subprocess.PIPE, text=True, start_new_session=True)
    proc.name = name
    proc.follow_events()

    def ready() -> dict[str, Any] | None:
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} exited with {proc.returncode} before it was ready")
        return next((event for event in proc.events if event["event"] == "ready"), None)

    try:
        said_ready = wait_until(ready, timeout, f"worker {name} ready")
        assert said_ready is not None
        proc.worker_id = said_ready["id"]
        connection = worker_connection_name(queue, name)
        wait_until(lambda: connection in _registered_names(redis_url), timeout, f"{connection} in CLIENT LIST")
    except BaseException:
        kill(proc)
        raise
    return proc


def enqueue_sleep(redis_url: str, queue: str, seconds: float) -> str:
    """Add a job that sleeps `seconds` to `queue`; its id."""
    result = subprocess.run(["node", str(SCRIPTS / "enqueue.mjs"), redis_url, queue, str(seconds)], env=_node_env(),
                            capture_output=True, text=True, check=True, timeout=60)
    return result.stdout.strip()


def start_producer(redis_url: str, queue: str, count: int, seconds: float = 0) -> subprocess.Popen[bytes]:
    """A producer adding `count` jobs of `seconds` each to `queue`, one after another, in its own
    process group (stop it with `kill`): with instant jobs and free workers, a busy queue."""
    return subprocess.Popen(["node", str(SCRIPTS / "enqueue.mjs"), redis_url, queue, str(seconds), str(count)],
                            env=_node_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def kill(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the worker's whole process group, as a crash or an OOM kill would, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass(frozen=True)
class JobState:
    """Where BullMQ has a job and who holds it, read from Redis in one go."""

    job_id: str
    in_active: bool
    in_wait: bool
    lock_token: str | None  # "<worker id>:<n>" while a worker holds it
    lock_ttl_ms: int | None
    processed_by: str | None  # the `pb` field: the name of the worker that last took it
    processed_on_ms: int | None
    finished_on_ms: int | None
    stalled_count: int  # `stc`: how often BullMQ's stalled checker has put it back

    @property
    def holder(self) -> str | None:
        """The id of the worker whose lock is on the job."""
        return self.lock_token.rsplit(":", 1)[0] if self.lock_token else None


def job_state(redis_url: str, queue: str, job_id: str) -> JobState:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.lpos(key(queue, "active"), job_id)
            pipe.lpos(key(queue, "wait"), job_id)
            pipe.get(lock_key(queue, job_id))
            pipe.pttl(lock_key(queue, job_id))
            pipe.hgetall(key(queue, job_id))
            active_at, wait_at, token, pttl, fields = pipe.execute()
    finally:
        client.close()

    def millis(field: str) -> int | None:
        return int(fields[field]) if field in fields else None

    return JobState(job_id=job_id, in_active=active_at is not None, in_wait=wait_at is not None, lock_token=token,
                    lock_ttl_ms=pttl if pttl >= 0 else None, processed_by=fields.get("pb"),
                    processed_on_ms=millis("processedOn"), finished_on_ms=millis("finishedOn"),
                    stalled_count=int(fields.get("stc", 0)))


def wait_held(redis_url: str, queue: str, job_id: str, timeout: float = 30) -> JobState:
    """Wait until a worker has taken the job: it is in the active list under a lock."""
    return wait_until(lambda: job_state(redis_url, queue, job_id), timeout, f"job {job_id} of {queue} to start",
                      done=lambda state: state.in_active and state.lock_token is not None)


def wait_finished(redis_url: str, queue: str, job_id: str, timeout: float = 30) -> JobState:
    return wait_until(lambda: job_state(redis_url, queue, job_id), timeout, f"job {job_id} of {queue} to finish",
                      done=lambda state: state.finished_on_ms is not None)
