"""Is a recorded PID still the task's engine? `taskmedic.processes.judge_engine` on real processes."""

from __future__ import annotations

import getpass
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from taskmedic.processes import START_TOLERANCE, judge_engine
from tests.engines import engine_program, reaped, start_engine, start_look_alikes


def test_look_alikes_whose_command_line_names_the_engine_are_not_the_engine(tmp: Path) -> None:
    program = engine_program(tmp)
    look_alikes = start_look_alikes()
    with reaped(*look_alikes):
        for proc in look_alikes:
            for engine in ("scan-engine", str(program)):
                verdict = judge_engine(proc.pid, engine, None, time.time())
                assert verdict.kind == "not_engine", (proc.args, engine, verdict)
                assert "not 'scan-engine'" in verdict.reason or f"not {str(program)!r}" in verdict.reason


def test_the_engine_is_judged_by_its_executable_path_or_bare_name(tmp: Path) -> None:
    program = engine_program(tmp)
    engine = start_engine(program)
    with reaped(engine):
        for name in (str(program), "scan-engine"):
            assert judge_engine(engine.pid, name, None, time.time()).is_engine, name
        # a path is compared whole: the same name elsewhere is another program
        assert judge_engine(engine.pid, "/usr/local/bin/scan-engine", None, time.time()).kind == "not_engine"
        assert judge_engine(engine.pid, "scan", None, time.time()).kind == "not_engine"


def test_a_process_created_after_its_task_started_is_a_reused_pid(tmp: Path) -> None:
    engine = start_engine(engine_program(tmp))
    with reaped(engine):
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        verdict = judge_engine(engine.pid, "scan-engine", None, an_hour_ago)
        assert (verdict.kind, verdict.reason.endswith("a reused PID")) == ("not_engine", True)
        # a task recorded as started just before its engine was spawned is that engine's
        assert judge_engine(engine.pid, "scan-engine", None, time.time() - START_TOLERANCE / 2).is_engine
        # nor is an engine the scanner spawned 100 s after marking its task Running (a queue, a warm-up)
        assert judge_engine(engine.pid, "scan-engine", None, time.time() - 100).is_engine
        with pytest.raises(ValueError, match="no time zone"):
            judge_engine(engine.pid, "scan-engine", None, datetime.now())


def test_an_engine_of_another_owner_is_not_the_engine(tmp: Path) -> None:
    engine = start_engine(engine_program(tmp))
    with reaped(engine):
        me = getpass.getuser()
        assert judge_engine(engine.pid, "scan-engine", me, time.time()).is_engine
        assert judge_engine(engine.pid, "scan-engine", str(os.getuid()), time.time()).is_engine
        other = "nobody" if me != "nobody" else "root"
        assert judge_engine(engine.pid, "scan-engine", other, time.time()).reason == f"owned by {me!r}, not {other!r}"


def test_a_dead_engine_is_gone_whether_or_not_it_was_reaped(tmp: Path) -> None:
    engine = start_engine(engine_program(tmp))
    engine.kill()
    deadline = time.monotonic() + 5
    while judge_engine(engine.pid, "scan-engine", None, time.time()).kind != "gone":  # a zombie now
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert "zombie" in judge_engine(engine.pid, "scan-engine", None, time.time()).reason
    engine.wait()
    assert judge_engine(engine.pid, "scan-engine", None, time.time()).kind == "gone"
