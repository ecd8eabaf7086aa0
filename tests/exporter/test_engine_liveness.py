"""Process-backed tasks (scanner), judged by the engine's own evidence: the recorded PID is the
engine only if it runs the engine's executable and predates its task, and alive means gaining CPU
time. Real processes: a busy engine, one stopped with SIGSTOP, one asleep, a dead one and a PID
the OS gave to a newer engine process."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

from exporter.collectors import build_all
from exporter.config import ExporterConfig
from exporter.runtime import run_once
from taskmedic.config import load
from taskmedic.connections import Connections
from taskmedic.detection import TARGET_KINDS, Inventory
from tests.conftest import Database
from tests.exporter.helpers import value

WINDOW = 2.0
JUDGED_AT_ONCE = (f"    tasks:\n      stuck:\n        process_gone: {{min_age: 0s}}\n"
                  f"        no_progress: {{min_age: 0s, progress_window: {WINDOW}s}}\n")


def engine(directory: Path, like: str, *argv: str) -> subprocess.Popen[bytes]:
    """A process whose executable is named scan-engine: a copy of `like` (yes: busy; sleep: idle)."""
    directory.mkdir(exist_ok=True)
    program = directory / "scan-engine"
    shutil.copy(shutil.which(like) or f"/usr/bin/{like}", program)
    proc = subprocess.Popen([str(program), *argv], stdout=subprocess.DEVNULL)
    time.sleep(0.2)  # let it exec and, for the busy one, gain CPU time
    return proc


def seed(db: Database, rows: list[tuple[str, int, str]]) -> None:
    db.load("scanner.sql")
    for target, pid, started in rows:
        db.sql(f"insert into scan_tasks (target, state, engine_pid, started_at) values "
               f"('{target}', 'Running', {pid}, {started})")


async def test_hung_engine_is_no_progress_dead_and_reused_are_process_gone_busy_is_fine(
        db: Database, tmp: Path) -> None:
    busy = engine(tmp / "busy", "yes")
    stopped = engine(tmp / "stopped", "yes")
    asleep = engine(tmp / "asleep", "sleep", "300")
    dead = engine(tmp / "dead", "sleep", "300")
    reused = engine(tmp / "reused", "sleep", "300")
    dead.kill()
    dead.wait()
    stopped.send_signal(signal.SIGSTOP)
    try:
        seed(db, [("busy", busy.pid, "now()"), ("stopped", stopped.pid, "now()"), ("asleep", asleep.pid, "now()"),
                  ("dead", dead.pid, "now() - interval '1 hour'"),
                  ("reused", reused.pid, "now() - interval '1 hour'")])  # its engine predates this process
        path = tmp / "taskmedic.yml"
        path.write_text(f"systems:\n  scan:\n    profile: scanner\n    database: {db.dsn}\n{JUDGED_AT_ONCE}")
        connections = Connections("taskmedic-tests")
        try:
            (collector,) = [c for c in build_all(load(ExporterConfig, path, environ={}), connections)
                            if c.name == "tasks:scan"]
            first = await run_once(collector)
            assert first.error is None, first.error
            assert value(first, "taskmedic_stuck_tasks", reason="process_gone") == 2  # dead, reused
            assert value(first, "taskmedic_stuck_tasks", reason="no_progress") == 0  # not watched long enough
            time.sleep(WINDOW + 0.5)
            later = await run_once(collector)
            assert value(later, "taskmedic_stuck_tasks", reason="no_progress") == 2  # stopped, asleep
            assert value(later, "taskmedic_stuck_tasks", reason="process_gone") == 2
            stopped.send_signal(signal.SIGCONT)  # it resumes: progressing again at the next look
            time.sleep(0.5)
            resumed = await run_once(collector)
            assert value(resumed, "taskmedic_stuck_tasks", reason="no_progress") == 1  # asleep only
        finally:
            await connections.close()
    finally:
        for proc in (busy, stopped, asleep, reused):
            proc.kill()
            proc.wait()


async def test_at_action_time_the_remediator_confirms_the_hang_and_spares_the_busy_engine(
        db: Database, tmp: Path) -> None:
    """The remediator has never watched these engines: `targets: stuck` samples them at action
    time (taskmedic.detection.stuck.ACTION_TIME_SAMPLE) and keeps only the one that gained nothing."""
    busy = engine(tmp / "busy", "yes")
    stopped = engine(tmp / "stopped", "yes")
    stopped.send_signal(signal.SIGSTOP)
    try:
        seed(db, [("busy", busy.pid, "now()"), ("stopped", stopped.pid, "now()")])
        path = tmp / "taskmedic.yml"
        path.write_text(f"systems:\n  scanner:\n    profile: scanner\n    database: {db.dsn}\n{JUDGED_AT_ONCE}")
        config = load(ExporterConfig, path, environ={})
        connections = Connections("taskmedic-tests")
        try:
            found = await TARGET_KINDS["stuck"].find({"system": "scanner", "reason": "no_progress"},
                                                     Inventory(config.systems), connections, 10)
        finally:
            await connections.close()
        assert [r["engine_pid"] for r in found.rows] == [stopped.pid]
    finally:
        for proc in (busy, stopped):
            proc.kill()
            proc.wait()
