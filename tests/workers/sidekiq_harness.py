"""A real Sidekiq for the tests: Debian's ruby-sidekiq (6.4.1 on bookworm) and the pure-Ruby
packages it needs, unpacked once into .cache/engines/sidekiq/ and run by the system's ruby.

Jobs are enqueued with the same two Redis commands Sidekiq::Client sends (SADD queues, LPUSH
queue:<name> of the job's JSON), which spares a Ruby start-up per job. Each SleepJob
(tests/workers/sidekiq/jobs.rb) marks its start and end under `harness:sidekiq:*`, because what
Sidekiq itself records about a running job appears only at its next heartbeat, up to 5 s later;
it also counts its starts (`harness:sidekiq:runs:<jid>`), so a job run twice shows.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import pytest
import redis

from tests.polling import wait_until

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "engines"
INSTALL_DIR = CACHE / "sidekiq"
JOBS = Path(__file__).parent / "sidekiq" / "jobs.rb"
# ruby-sidekiq and its Depends that are Ruby libraries; `ruby` itself comes from the system.
DEBIAN_PACKAGES = ("ruby-sidekiq", "ruby-redis", "ruby-connection-pool", "ruby-rack")
GEMS = Path("usr/share/rubygems-integration/all/gems")
INSTALL_HINT = "apt-get install -y ruby-sidekiq"


@contextmanager
def _install_lock() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "sidekiq.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def _ruby() -> str:
    """The system's ruby; Debian's package is what provides it when it is missing."""
    ruby = shutil.which("ruby")
    if ruby is None and os.geteuid() == 0 and shutil.which("apt-get"):
        _run(["apt-get", "install", "-y", "ruby-sidekiq"])
        ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip(f"Sidekiq needs ruby, which is not installed ({INSTALL_HINT})")
    return ruby


def _unpack_debian_packages(target: Path) -> None:
    """`apt-get download` the packages and unpack them under `target` (no dpkg database, no root)."""
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        pytest.skip("Sidekiq is installed from Debian's ruby-sidekiq, but apt-get/dpkg-deb are missing")
    with tempfile.TemporaryDirectory(dir=CACHE) as downloads:
        fetched = _run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=Path(downloads))
        if fetched.returncode != 0:
            pytest.skip(f"cannot download Debian's {' '.join(DEBIAN_PACKAGES)}: {fetched.stderr.strip()[-500:]}")
        for deb in sorted(Path(downloads).glob("*.deb")):
            unpacked = _run(["dpkg-deb", "-x", str(deb), str(target)])
            if unpacked.returncode != 0:
                raise RuntimeError(f"dpkg-deb -x {deb.name}: {unpacked.stderr}")


def ensure_installed() -> Path:
    """The directory Debian's ruby-sidekiq is unpacked in, unpacking it once (safe across processes)."""
    _ruby()
    with _install_lock():
        if not INSTALL_DIR.is_dir():
            staging = Path(tempfile.mkdtemp(prefix="sidekiq-", dir=CACHE))
            try:
                _unpack_debian_packages(staging)
                staging.rename(INSTALL_DIR)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return INSTALL_DIR


def sidekiq_command(install: Path) -> list[str]:
    """`sidekiq` run from the unpacked gems, so the system's copies (if any) are never used."""
    gems = install / GEMS
    load_path = [arg for lib in sorted(gems.glob("*/lib")) for arg in ("-I", str(lib))]
    (program,) = gems.glob("sidekiq-*/bin/sidekiq")
    return [_ruby(), *load_path, str(program)]


def _client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def worker_identity(redis_url: str, pid: int) -> str | None:
    """The identity ("<hostname>:<pid>:<nonce>") the Sidekiq process `pid` heartbeats under."""
    client = _client(redis_url)
    try:
        for identity in client.smembers("processes"):
            info = client.hget(identity, "info")
            if info is not None and json.loads(info)["pid"] == pid:
                return str(identity)
        return None
    finally:
        client.close()


def identity_of(redis_url: str, proc: subprocess.Popen[bytes]) -> str:
    identity = worker_identity(redis_url, proc.pid)
    if identity is None:
        raise LookupError(f"sidekiq pid {proc.pid} is not registered in `processes`")
    return identity


def _spawn(command: list[str], redis_url: str, queue: str, concurrency: int, shutdown_timeout: int,
           log: IO[bytes] | int) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_PROVIDER", "DYNO")}
    env["REDIS_URL"] = redis_url
    argv = [*command, "-r", str(JOBS), "-q", queue, "-c", str(concurrency), "-t", str(shutdown_timeout)]
    # cwd without a config/ directory: Sidekiq would read config/sidekiq.yml from there.
    return subprocess.Popen(argv, env=env, cwd=JOBS.parent, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_registered(redis_url: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"sidekiq (pid {proc.pid}) exited with {proc.returncode} before registering")
        identity = worker_identity(redis_url, proc.pid)
        if identity is not None:
            return identity
        time.sleep(0.1)
    kill(proc)
    raise TimeoutError(f"sidekiq (pid {proc.pid}) did not heartbeat into Redis within {timeout}s")


def start_workers(redis_url: str, queue: str, count: int, *, concurrency: int = 1, shutdown_timeout: int = 25,
                  log: IO[bytes] | int = subprocess.DEVNULL, timeout: float = 60) -> list[subprocess.Popen[bytes]]:
    """`count` Sidekiq processes on `queue`, each in its own process group, started together and
    returned once each has written its first heartbeat (Ruby's start-up takes a few seconds)."""
    command = sidekiq_command(ensure_installed())
    procs = [_spawn(command, redis_url, queue, concurrency, shutdown_timeout, log) for _ in range(count)]
    try:
        for proc in procs:
            _wait_registered(redis_url, proc, timeout)
    except BaseException:
        for proc in procs:
            kill(proc)
        raise
    return procs


def start_worker(redis_url: str, queue: str, *, concurrency: int = 1, shutdown_timeout: int = 25,
                 log: IO[bytes] | int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return start_workers(redis_url, queue, 1, concurrency=concurrency, shutdown_timeout=shutdown_timeout,
                         log=log)[0]


def sleep_job(queue: str, seconds: float) -> tuple[str, str]:
    """A SleepJob as Sidekiq::Client writes it (compact JSON): its jid and its text."""
    jid = secrets.token_hex(12)
    now = time.time()
    job = {"retry": True, "queue": queue, "class": "SleepJob", "args": [seconds], "jid": jid,
           "created_at": now, "enqueued_at": now}
    return jid, json.dumps(job, separators=(",", ":"))


def enqueue(redis_url: str, queue: str, job_text: str) -> None:
    """Enqueue a job exactly as Sidekiq::Client#push does (one pipeline, not a transaction)."""
    client = _client(redis_url)
    try:
        pipeline = client.pipeline(transaction=False)
        pipeline.sadd("queues", queue)
        pipeline.lpush(f"queue:{queue}", job_text)
        pipeline.execute()
    finally:
        client.close()


def enqueue_sleep(redis_url: str, queue: str, seconds: float) -> str:
    """Enqueue a SleepJob; its jid."""
    jid, text = sleep_job(queue, seconds)
    enqueue(redis_url, queue, text)
    return jid


def _marker(redis_url: str, state: str, jid: str) -> str | None:
    client = _client(redis_url)
    try:
        value = client.get(f"harness:sidekiq:{state}:{jid}")
        return None if value is None else str(value)
    finally:
        client.close()


def job_runner(redis_url: str, jid: str) -> str | None:
    """The identity of the Sidekiq process that started job `jid`, or None if none has yet."""
    return _marker(redis_url, "started", jid)


def job_finished(redis_url: str, jid: str) -> bool:
    return _marker(redis_url, "finished", jid) is not None


def job_runs(redis_url: str, jid: str) -> int:
    """How many times job `jid` has been started, by any process."""
    return int(_marker(redis_url, "runs", jid) or 0)


def wait_started(redis_url: str, jid: str, timeout: float = 10) -> str:
    """Wait for job `jid` to start; the identity of the process running it."""
    return str(wait_until(lambda: job_runner(redis_url, jid), timeout, f"sidekiq job {jid} to start"))


def held_jobs(redis_url: str, identity: str) -> dict[str, dict[str, Any]]:
    """What Sidekiq records a process is running: its `<identity>:workers` hash, thread id -> work,
    with the work's `payload` (stored as a JSON string inside the JSON) decoded too."""
    client = _client(redis_url)
    try:
        held = client.hgetall(f"{identity}:workers")
    finally:
        client.close()
    works: dict[str, dict[str, Any]] = {str(tid): json.loads(value) for tid, value in held.items()}
    for work in works.values():
        work["payload"] = json.loads(work["payload"])
    return works


def held_jids(redis_url: str, identity: str) -> set[str]:
    return {work["payload"]["jid"] for work in held_jobs(redis_url, identity).values()}


def wait_held(redis_url: str, identity: str, jid: str, timeout: float = 8) -> None:
    """Wait for the process's heartbeat (every 5 s) to record that it runs job `jid`."""
    wait_until(lambda: held_jids(redis_url, identity), timeout, f"{identity}:workers to hold job {jid}",
               done=lambda held: jid in held)


def last_beat(redis_url: str, identity: str) -> float | None:
    """The process's last heartbeat: `beat` of its `<identity>` hash, epoch seconds of the worker host."""
    client = _client(redis_url)
    try:
        beat = client.hget(identity, "beat")
    finally:
        client.close()
    return None if beat is None else float(beat)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker's whole process group and reap it."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def terminate(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """SIGTERM, Sidekiq's normal shutdown: after `-t` seconds it pushes unfinished jobs back."""
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)
