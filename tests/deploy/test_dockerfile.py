"""The Dockerfile: multi-stage, non-root, installs the package, the entrypoint picks the command."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.deploy.helpers import (
    DOCKERFILE,
    ROOT,
    taskmedic_containers,
)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multistage_non_root_and_installs_the_package() -> None:
    steps = dockerfile_instructions()
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    stages = [a.split()[0] for k, a in steps if k == "FROM"]
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], s) for s in stages]
    assert len(bases) >= 2 and all(b == "python:3.11-slim" for b in bases), bases
    final = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM"):]
    users = [a for k, a in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    uid = int(users[-1].split(":")[0])
    for _, _, container in taskmedic_containers():
        assert container.get("securityContext", {}).get("runAsUser", uid) == uid
    assert any(k == "RUN" and "pip install ." in a for k, a in steps)
    for k, a in steps:
        if k == "COPY" and not a.startswith("--from"):
            for source in a.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', pyproject, re.M)
    copied = {s.rstrip("/") for k, a in steps if k == "COPY" and not a.startswith("--from") for s in a.split()[:-1]}
    assert {"pyproject.toml", "exporter", "remediator"} <= copied
    if readme:
        assert readme.group(1) in copied, "pip install . needs the readme pyproject names"


def test_dockerfile_entrypoint_chooses_the_command(tmp_path: Path) -> None:
    steps = dict(dockerfile_instructions())
    entrypoint = json.loads(steps["ENTRYPOINT"])
    cmd = json.loads(steps["CMD"])
    assert cmd[0] == "exporter"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("taskmedic-exporter", "taskmedic-remediator"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "{name}:$#:$*"\n', encoding="utf-8")
        stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}

    def run(*args: str) -> str:
        out = subprocess.run([*entrypoint, *args], capture_output=True, text=True, env=env, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert run("exporter", "--config", "/etc/x y.yml") == "taskmedic-exporter:2:--config /etc/x y.yml"
    assert run("remediator", "check", "--config", "c") == "taskmedic-remediator:3:check --config c"
    assert run(*cmd) == f"taskmedic-exporter:{len(cmd) - 1}:{' '.join(cmd[1:])}"
    assert run("echo", "plain") == "plain"
