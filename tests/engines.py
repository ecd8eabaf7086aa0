"""Stand-ins for a scanner's engine processes (S5): the real engine, and programs that only look
like it. The engine is a program of its own, a copy of `sleep` named scan-engine, because the
remediator judges a PID by its executable, never by its command line."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil


def engine_program(directory: Path) -> Path:
    program = directory / "scan-engine"
    if not program.exists():
        shutil.copy(shutil.which("sleep") or "/bin/sleep", program)
    return program


def _started(proc: subprocess.Popen[bytes], argv0: str) -> subprocess.Popen[bytes]:
    """Wait until the process runs its final program (a shell's `exec` takes a moment)."""
    end = time.monotonic() + 5
    while time.monotonic() < end:
        try:
            if psutil.Process(proc.pid).cmdline()[:1] == [argv0]:
                return proc
        except (psutil.Error, IndexError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"{argv0!r} did not start")


def start_engine(program: Path) -> subprocess.Popen[bytes]:
    return _started(subprocess.Popen([str(program), "300"]), str(program))


def start_look_alikes() -> list[subprocess.Popen[bytes]]:
    """Processes whose command line contains the engine's name, run by other programs."""
    vim = subprocess.Popen(["bash", "-c", 'exec -a "vim /etc/scan-engine.conf" sleep 300'])
    note = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "--note", "not-a-scan-engine"])
    return [_started(vim, "vim /etc/scan-engine.conf"), _started(note, sys.executable)]


@contextmanager
def reaped(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
