"""A malformed engine description: a precise file:line error, exit 1, nothing started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BASE = """systems:
  d:
    profile: dramatiq
    redis: redis://127.0.0.1:1/0
    queues:
      engine:
"""


@pytest.mark.parametrize(("engine", "error"), [
    # a conversion or format spec renders another key than SCAN found and parsed back
    ("holding: {key: 'dramatiq:__acks__.{worker!r}.{queue}'}", "c.yml:7: systems.d.queues.engine.holding.key: "
     "key template 'dramatiq:__acks__.{worker!r}.{queue}' uses {worker!r}"),
    ("holding: {key: 'dramatiq:__acks__.{worker}.{queue:.3}'}", "uses {queue:.3}"),
    ("recovery: {also: [[zadd, 'k{queue!s}', '0', '{worker}']]}", "uses {queue!s}"),
    ("holding: {key: 'dramatiq:__acks__.{wrker}.{queue}'}", "c.yml:7: systems.d.queues.engine.holding.key: key "
     "template 'dramatiq:__acks__.{wrker}.{queue}' uses {wrker}"),
    ("holding: {key: 'dramatiq:__acks__.{worker}.{queue}}'}", "Single '}' encountered"),
    ("recovery: {also: [[flushall, x]]}", "also[0].command: Input should be"),
    ("recovery: {per_worker: [[del, 'x:{queue}']]}", "cannot use {queue}"),
    ("recovery: {push_to: null, push_if_in: null}", "c.yml:6: systems.d.queues.engine: recovery.push_to"),
])
def test_a_bad_engine_description_is_a_file_line_error(tmp: Path, engine: str, error: str) -> None:
    (tmp / "c.yml").write_text(BASE + "        " + engine + "\n")
    done = subprocess.run([sys.executable, "-m", "exporter.cli", "check", "--config", "c.yml"], cwd=tmp,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert error in done.stderr, done.stderr
