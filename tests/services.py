"""Throwaway servers for the tests. PostgreSQL, Redis and child processes live in
`deploy/local/servers.py`, shared with `make demo` and the benchmarks; what only tests need is here."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from deploy.local.servers import (
    PostgresServer,
    RedisServer,
    free_port,
    pg_bindir,
    running,
    tempdir,
    wait_http,
    wait_port,
)

__all__ = ["PostgresServer", "RedisServer", "free_port", "pg_bindir", "running", "tempdir", "wait_http", "wait_port",
           "writer"]


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
