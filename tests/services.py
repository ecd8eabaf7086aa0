"""Throwaway real servers for the tests: PostgreSQL (initdb into a temp dir), Redis,
Prometheus and Alertmanager, each on a free loopback port. Nothing here is a mock."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def wait_http(url: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except Exception as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout}s: {last}")


def pg_bindir() -> str:
    with contextlib.suppress(OSError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and os.path.exists(os.path.join(out, "initdb")):
            return out
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    if not found:
        raise RuntimeError("initdb not found: run `make deps` (Debian package postgresql)")
    return os.path.dirname(found[-1])


@dataclass
class PostgresServer:
    """A private cluster; as root it runs as the `postgres` user (initdb refuses root)."""

    root: Path
    port: int = field(default_factory=free_port)
    options: str = ""

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _as_owner(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        subprocess.run([*self._as_owner(), f"{pg_bindir()}/initdb", "-D", str(self.data), "-U", "postgres",
                        "-A", "trust", "--no-sync", "-E", "UTF8"], check=True, stdout=subprocess.DEVNULL)

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c full_page_writes=off -c synchronous_commit=off -c max_connections=200 {self.options}")
        subprocess.run([*self._as_owner(), f"{pg_bindir()}/pg_ctl", "-D", str(self.data), "-l",
                        str(self.root / "pg.log"), "-w", "-o", opts, "start"], check=True, stdout=subprocess.DEVNULL)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([*self._as_owner(), f"{pg_bindir()}/pg_ctl", "-D", str(self.data), "-m", mode, "-w",
                        "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def psql(self, sql: str, db: str = "postgres") -> str:
        out = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", self.dsn(db), "-c", sql],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def psql_file(self, path: str | Path, db: str = "postgres") -> None:
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", self.dsn(db), "-f", str(path)],
                       check=True, capture_output=True, text=True)

    _counter: int = 0

    def create_database(self, prefix: str = "t") -> str:
        """A fresh, empty database for one test, so tests never see each other's rows."""
        PostgresServer._counter += 1
        name = f"{prefix}_{os.getpid()}_{PostgresServer._counter}"
        self.psql(f'create database "{name}"')
        return name


@dataclass
class RedisServer:
    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(self.root)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


@contextlib.contextmanager
def running(argv: list[str], log: Path, env: dict[str, str] | None = None,
            preexec_fn: Callable[[], None] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A child process for the duration of a `with`, its output in `log`; terminated after."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                preexec_fn=preexec_fn)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def tempdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def writer(path: Path, data: bytes) -> Iterator[subprocess.Popen[bytes]]:
    """A real process that opens `path` for writing, writes `data` and then pauses, holding the
    file open, as a backup job does between two chunks; killed after the `with`."""
    script = ("import sys, time\nf = open(sys.argv[1], 'wb')\nf.write(bytes.fromhex(sys.argv[2]))\nf.flush()\n"
              "print('ready', flush=True)\ntime.sleep(3600)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(path), data.hex()], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()
