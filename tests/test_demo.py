"""The closed loop end to end, as `make demo ONCE=1` runs it: real PostgreSQL, Redis,
Prometheus with the shipped rules, Alertmanager, exporter, remediator and playbooks.
Every seeded incident must be healed, the healthy-but-slow work beside it untouched, and every
Grafana panel's query must return series."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_heals_every_incident_and_touches_nothing_healthy() -> None:
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "deploy.local.demo", "--once", "--timeout", "120"], cwd=ROOT,
                         capture_output=True, text=True, timeout=180)
    elapsed = time.monotonic() - started
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "healed" in res.stdout and "healthy work untouched" in res.stdout
    assert "dashboard queries return series" in res.stdout
    for incident in ("S1 CAPE", "S2 Timesketch", "S3 Harbor", "S5 scanner", "Celery"):
        assert f"{incident}" in res.stdout
    assert elapsed < 180
