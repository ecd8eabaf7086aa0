"""The compose stack: services and references, Prometheus scraping and rules, Alertmanager
delivering to the remediator, Grafana provisioning, and the taskmedic config passing `check`."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.helpers import (
    COMPOSE_DIR,
    DOCKERFILE,
    ROOT,
    RULES,
    check_config,
    env_refs,
    flag,
    remediator_available,
    rule_files,
    rule_job_names,
)


def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text(encoding="utf-8"))


def dotenv_example() -> dict[str, str]:
    out = {}
    for line in (COMPOSE_DIR / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def interpolate(value: str, env: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(3)
        if name in env:
            return env[name]
        assert default is not None and m.group(2) in (":-", "-"), f"${{{name}}} is not defined in .env.example"
        return default
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", one, value)


def bind_mounts(service: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    for volume in service.get("volumes", []):
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
        if source.startswith((".", "/")):
            yield (COMPOSE_DIR / source).resolve(), target


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The host path that a container path of a service maps to through its bind mounts."""
    for source, target in sorted(bind_mounts(service), key=lambda m: -len(m[1])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target):].lstrip("/")
    return None


def listen_port(service: dict[str, Any]) -> int:
    return int(flag(service["command"], "--listen").rsplit(":", 1)[1])


def test_compose_services_and_references() -> None:
    spec = compose()
    services = spec["services"]
    assert {"postgres", "redis", "prometheus", "alertmanager", "exporter", "remediator", "grafana"} <= set(services)
    env = dotenv_example()
    text = (COMPOSE_DIR / "compose.yaml").read_text(encoding="utf-8")
    interpolate(text, env)  # every ${VAR} without a default is documented in .env.example
    assert all("CHANGE_ME" in v for v in env.values()), ".env.example holds placeholders only"
    declared_volumes = set(spec.get("volumes") or {})
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = (COMPOSE_DIR / service["build"]["context"]).resolve()
            assert context == ROOT, "the image is built from the repository root"
            assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        for source, _ in bind_mounts(service):
            assert source.exists(), f"{name}: {source} does not exist"
        for other in service.get("depends_on", []):
            assert other in services, f"{name} depends on unknown service {other}"
        for secret in service.get("secrets", []):
            assert secret in spec["secrets"], f"{name}: unknown secret {secret}"
    for name, secret in spec["secrets"].items():
        if "file" in secret:
            assert (COMPOSE_DIR / secret["file"]).exists(), name
        else:
            assert secret["environment"] in env, f"secret {name}: {secret['environment']} not in .env.example"
    for name in ("exporter", "remediator"):
        service = services[name]
        assert service["command"][0] == name
        assert service.get("read_only") is True and "ALL" in service.get("cap_drop", [])
        config = host_path(service, flag(service["command"], "--config"))
        assert config == COMPOSE_DIR / "taskmedic.yml", f"{name} reads {config}"
    initdb = host_path(services["postgres"], "/docker-entrypoint-initdb.d")
    assert initdb is not None
    scripts = list(initdb.glob("*.sh"))
    assert scripts and all(s.stat().st_mode & stat.S_IXUSR for s in scripts)
    for script in scripts:
        for seed in re.findall(r"-f\s+(\S+)", script.read_text(encoding="utf-8")):
            path = host_path(services["postgres"], seed)
            assert path is not None and path.is_file(), f"{script.name} loads {seed}, which is not mounted"


def test_compose_prometheus_scrapes_and_loads_rules(tmp_path: Path) -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    config = host_path(prometheus, "/etc/prometheus/prometheus.yml")
    assert config is not None and config.is_file()
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    spec = yaml.safe_load(config.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
            for job in spec["scrape_configs"]}
    assert rule_job_names() | {"taskmedic-exporter", "taskmedic-remediator"} <= set(jobs)
    for job in ("taskmedic-exporter", "taskmedic-remediator"):
        (target,) = jobs[job]
        host, port = target.rsplit(":", 1)
        assert host in services and int(port) == listen_port(services[host]), target
    (am,) = [t for a in spec["alerting"]["alertmanagers"] for sc in a["static_configs"] for t in sc["targets"]]
    assert am.split(":")[0] in services
    rule_globs = []
    for pattern in spec["rule_files"]:
        host = host_path(prometheus, pattern)
        assert host is not None, f"{pattern} is not mounted into prometheus"
        assert host.parent == RULES, f"{pattern} does not map to rules/"
        assert sorted(host.parent.glob(host.name)) == rule_files()
        rule_globs.append(str(host))
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed")
    spec["rule_files"] = rule_globs
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    out = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_alertmanager_delivers_to_the_remediator(tmp_path: Path) -> None:
    services = compose()["services"]
    alertmanager = services["alertmanager"]
    path = host_path(alertmanager, flag_value(alertmanager["command"], "--config.file"))
    assert path is not None
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    hooks = [h for r in spec["receivers"] for h in r.get("webhook_configs", [])]
    (hook,) = hooks
    url = urlsplit(hook["url"])
    assert url.hostname == "remediator" and url.port == listen_port(services["remediator"]) and url.path == "/alerts"
    assert hook["send_resolved"] is True and hook["max_alerts"] > 0
    auth = hook["http_config"]["authorization"]
    assert "credentials" not in auth
    secret = auth["credentials_file"].removeprefix("/run/secrets/")
    assert secret in alertmanager["secrets"] and secret in services["remediator"]["secrets"]
    taskmedic = yaml.safe_load((COMPOSE_DIR / "taskmedic.yml").read_text(encoding="utf-8"))
    assert taskmedic["remediator"]["auth"]["bearer_token_file"] == f"/run/secrets/{secret}"
    routes = spec["route"].get("routes", [])
    assert any(r["receiver"] == "taskmedic-remediator" for r in routes)
    if shutil.which("amtool") is None:
        pytest.skip("amtool not installed")
    out = subprocess.run(["amtool", "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def flag_value(command: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in command if a.startswith(name + "=")]
    return value


def test_compose_grafana_provisioning_matches_mounts() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    providers = host_path(grafana, "/etc/grafana/provisioning/dashboards")
    assert providers is not None and providers.is_dir()
    paths = [p["options"]["path"] for f in providers.glob("*.y*ml")
             for p in (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("providers", [])]
    assert paths, "no dashboard provider"
    for path in paths:
        host = host_path(grafana, path)
        assert host is not None and list(host.glob("*.json")), f"provider path {path} has no dashboards mounted"
    datasources = host_path(grafana, "/etc/grafana/provisioning/datasources")
    assert datasources is not None
    for f in datasources.glob("*.y*ml"):
        for ds in (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("datasources", []):
            if ds.get("type") == "prometheus":
                url = urlsplit(ds["url"])
                assert url.hostname in services and url.port == 9090, ds["url"]


def test_compose_taskmedic_config_passes_check(tmp_path: Path) -> None:
    services = compose()["services"]
    dotenv = dotenv_example()
    text = (COMPOSE_DIR / "taskmedic.yml").read_text(encoding="utf-8")
    # Each process gets only its own environment: neither may need the other section's secrets.
    for name in ("remediator", "exporter"):
        env = {k: interpolate(str(v), dotenv) for k, v in services[name].get("environment", {}).items()}
        refs = env_refs(text)
        if name == "exporter":
            refs -= env_refs(yaml.safe_dump(yaml.safe_load(text).get("remediator")))
        assert refs <= set(env), f"{name} lacks {sorted(refs - set(env))}"
        if name == "remediator" and not remediator_available():
            continue
        config = text.replace("/usr/share/taskmedic/rules", str(RULES))
        token = tmp_path / "webhook_token"
        token.write_text("CHANGE_ME", encoding="utf-8")
        config = config.replace("/run/secrets/webhook_token", str(token))
        result = check_config(name, config, env, tmp_path)
        assert result.returncode == 0, f"{name}: {result.stderr}"
