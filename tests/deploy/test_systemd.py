"""The systemd units: structure and `systemd-analyze verify`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.helpers import (
    SYSTEMD,
    flag,
)

UNITS = sorted(SYSTEMD.glob("*.service"))


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            assert current not in sections, f"{path.name}:{number}: duplicate section"
            sections[current] = []
            continue
        assert current is not None, f"{path.name}:{number}: key outside a section"
        assert "=" in line, f"{path.name}:{number}: not key=value"
        key, _, value = line.partition("=")
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()), f"{path.name}:{number}: bad key {key!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def test_systemd_units_exist() -> None:
    assert {u.name for u in UNITS} == {"taskmedic-exporter.service", "taskmedic-remediator.service"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_unit_structure(unit: Path) -> None:
    sections = parse_unit(unit)
    assert set(sections) == {"Unit", "Service", "Install"}
    service = dict(sections["Service"])  # the last value of a repeated key wins, as in systemd
    command = unit.stem.removeprefix("taskmedic-")
    exec_start = service["ExecStart"].split()
    assert exec_start[0].startswith("/") and exec_start[0].endswith(f"/taskmedic-{command}")
    assert flag(exec_start, "--config").startswith("/etc/")
    assert int(flag(exec_start, "--listen").rsplit(":", 1)[1]) == {"exporter": 9863, "remediator": 9864}[command]
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service.get("DynamicUser") == "yes" or service.get("User") == "taskmedic"
    assert service["EnvironmentFile"].lstrip("-").startswith("/etc/")
    assert service.get("CapabilityBoundingSet") == ""
    if command == "exporter":
        assert service.get("ProtectProc", "default") == "default", "process checks need to see other users' PIDs"
    assert dict(sections["Install"])["WantedBy"] == "multi-user.target"
    assert "Description" in dict(sections["Unit"])


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (structure is checked above)")
    # The units run /opt/taskmedic/venv/bin/...; verify needs an existing executable, so point
    # them at this interpreter's environment, where the same entry points are installed.
    venv = Path(sys.executable).parent.parent
    for name in ("taskmedic-exporter", "taskmedic-remediator"):
        if not (venv / "bin" / name).exists():
            pytest.skip(f"{name} is not installed in {venv}")
    copies = []
    for unit in UNITS:
        copy_path = tmp_path / unit.name
        copy_path.write_text(unit.read_text(encoding="utf-8").replace("/opt/taskmedic/venv", str(venv)),
                             encoding="utf-8")
        copies.append(str(copy_path))
    out = subprocess.run(["systemd-analyze", "verify", *copies], capture_output=True, text=True, timeout=120)
    # verify exits 0 on mere warnings (unknown key, unparsable value): any line about our units fails.
    ours = [line for line in (out.stdout + out.stderr).splitlines() if any(u.name in line for u in UNITS)]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr
