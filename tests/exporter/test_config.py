"""Bad configs of every kind: exit 1 with file, line, key and what was expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import ExporterConfig
from taskmedic.config import ConfigError, load


def write(tmp: Path, text: str) -> Path:
    path = tmp / "taskmedic.yml"
    path.write_text(text)
    return path


def problems(tmp: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load(ExporterConfig, write(tmp, text), environ=env or {})
    return err.value.problems


def test_contract_minimal_config_loads_with_profiles(tmp: Path) -> None:
    cfg = load(ExporterConfig, write(tmp, """systems:
  cape:
    profile: cape
    database: ${CAPE_DATABASE_URL}
  jobs:
    profile: celery
    redis: redis://127.0.0.1:6379/0
disks:
  - path: /var/lib/cape/storage
backups:
  sysreptor:
    path: /srv/backups
    pattern: "*.zip"
"""), environ={"CAPE_DATABASE_URL": "postgresql://cape:pw@db:5432/cape"})
    cape = cfg.systems["cape"]
    assert cape.tasks is not None and cape.tasks.table == "tasks"
    assert cape.tasks.stuck["pending_too_long"].max_age == 3600
    assert cfg.systems["jobs"].queues is not None and cfg.systems["jobs"].queues.names == ["celery"]
    assert "pw" not in repr(cfg)  # secrets never shown


def test_profile_is_overridden_key_by_key(tmp: Path) -> None:
    cfg = load(ExporterConfig, write(tmp, """systems:
  cape:
    profile: cape
    database: postgresql://u@h/cape
    tasks:
      stuck:
        pending_too_long:
          max_age: 2h
"""), environ={})
    tasks = cfg.systems["cape"].tasks
    assert tasks is not None
    assert tasks.stuck["pending_too_long"].max_age == 7200
    assert tasks.stuck["pending_too_long"].age == "added_on"  # kept from the profile
    assert "running_too_long" in tasks.stuck


def test_typo_names_file_line_and_nearest_key(tmp: Path) -> None:
    out = problems(tmp, "systems:\n  cape:\n    profile: cape\n    databse: postgresql://h/db\n")
    assert any(p.startswith(f"{tmp}/taskmedic.yml:4: systems.cape.databse: unknown key; did you mean 'database'?")
               for p in out), out


def test_bad_duration_is_explained(tmp: Path) -> None:
    out = problems(tmp, """systems:
  cape:
    profile: cape
    database: postgresql://h/db
    tasks:
      stuck:
        pending_too_long:
          max_age: soon
""")
    assert any(":8: systems.cape.tasks.stuck.pending_too_long.max_age: expected a duration like 30s, 10m, 1h, 2d"
               in p for p in out), out


def test_bad_dsn_is_rejected_without_echoing_it(tmp: Path) -> None:
    out = problems(tmp, "systems:\n  cape:\n    profile: cape\n    database: mysql://u:hunter2@h/db\n")
    assert any("systems.cape.database: expected a PostgreSQL URL" in p for p in out), out
    assert not any("hunter2" in p for p in out)


def test_missing_environment_variable(tmp: Path) -> None:
    out = problems(tmp, "systems:\n  cape:\n    profile: cape\n    database: ${NOPE_DB}\n")
    assert out == [f"{tmp}/taskmedic.yml:4: systems.cape.database: environment variable NOPE_DB is not set"]


def test_malformed_yaml_names_the_line(tmp: Path) -> None:
    out = problems(tmp, "systems:\n  cape: [unclosed\n")
    assert out[0].startswith(f"{tmp}/taskmedic.yml:") and "invalid YAML" in out[0]


def test_unknown_profile_suggests_the_right_one(tmp: Path) -> None:
    out = problems(tmp, "systems:\n  x:\n    profile: celry\n    redis: redis://h/0\n")
    assert "unknown profile 'celry'" in out[0] and "did you mean 'celery'?" in out[0]


def test_stuck_rule_needs_exactly_one_check(tmp: Path) -> None:
    out = problems(tmp, """systems:
  app:
    database: postgresql://h/db
    tasks:
      table: jobs
      statuses: [queued, done]
      live: [queued]
      stuck:
        weird:
          status: queued
          age: created_at
""")
    assert any("systems.app.tasks.stuck.weird: set exactly one check" in p for p in out), out


def test_sql_identifiers_are_checked(tmp: Path) -> None:
    out = problems(tmp, """systems:
  app:
    database: postgresql://h/db
    tasks:
      table: "jobs; drop table x"
      statuses: [queued]
""")
    assert any("systems.app.tasks.table: expected a table name" in p for p in out), out


def test_stuck_status_must_be_live(tmp: Path) -> None:
    out = problems(tmp, """systems:
  app:
    database: postgresql://h/db
    tasks:
      table: jobs
      statuses: [queued, done]
      live: [queued]
      stuck:
        late: {status: done, age: created_at, max_age: 1h}
""")
    assert any("late checks status 'done', which is not in live" in p for p in out), out


def test_nothing_to_watch(tmp: Path) -> None:
    assert any("nothing to watch" in p for p in problems(tmp, "remediator: {}\n"))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=60)


def test_check_command_exit_codes(tmp: Path) -> None:
    good = write(tmp, "disks:\n  - path: /\n")
    ok = run_cli("check", "--config", str(good))
    assert ok.returncode == 0, ok.stderr
    bad = tmp / "bad.yml"
    bad.write_text("disks:\n  - pth: /\n")
    res = run_cli("check", "--config", str(bad))
    assert res.returncode == 1
    assert f"{bad}:2: disks[0].pth: unknown key; did you mean 'path'?" in res.stderr
    assert run_cli("check").returncode == 2  # usage: --config missing
    assert run_cli("--listen", "nonsense", "--config", str(good)).returncode == 2
    missing = run_cli("check", "--config", str(tmp / "absent.yml"))
    assert missing.returncode == 1 and "absent.yml: cannot read" in missing.stderr


def test_check_connect_reaches_sources_and_explains_the_query(db, redis_url: str, tmp: Path) -> None:  # type: ignore[no-untyped-def]
    db.load("cape.sql")
    cfg = write(tmp, f"systems:\n  cape:\n    profile: cape\n    database: {db.dsn}\n"
                     f"  jobs:\n    profile: celery\n    redis: {redis_url}\n")
    ok = run_cli("check", "--config", str(cfg), "--connect")
    assert ok.returncode == 0, ok.stderr
    assert "cape: database" in ok.stdout and "reachable" in ok.stdout
    assert "jobs: redis" in ok.stdout
    down = write(tmp, "systems:\n  cape:\n    profile: cape\n    database: postgresql://u:secret@127.0.0.1:1/x\n"
                      "    timeout: 2s\n")
    res = run_cli("check", "--config", str(down), "--connect")
    assert res.returncode == 1
    assert "systems.cape.database: cannot query postgresql://u:***@127.0.0.1:1/x" in res.stderr
    assert "secret" not in res.stderr


def test_check_connect_never_prints_passwords_given_as_query_parameters(pg, redis_url: str, tmp: Path) -> None:  # type: ignore[no-untyped-def]
    missing_db = pg.dsn("no_such_database") + "?password=hunter2-pg&sslmode=disable"
    closed = "postgresql://cape@127.0.0.1:1/cape?sslpassword=hunter2-ssl&password=hunter2-closed"
    redis = redis_url.rsplit("/", 1)[0] + "/0?password=hunter2-redis"
    cfg = write(tmp, f"systems:\n  cape:\n    profile: cape\n    database: '{missing_db}'\n    timeout: 2s\n"
                     f"  other:\n    profile: cape\n    database: '{closed}'\n    timeout: 2s\n"
                     f"  jobs:\n    profile: celery\n    redis: '{redis}'\n")
    res = run_cli("check", "--config", str(cfg), "--connect", "--log-level", "debug")
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "hunter2" not in out
    assert "no_such_database?password=***&sslmode=disable" in out  # which one failed stays readable
    assert "cape?sslpassword=***&password=***" in out
    assert "/0?password=***" in out


def test_the_other_process_section_is_ignored_with_its_secrets(tmp: Path) -> None:
    cfg = load(ExporterConfig, write(tmp, "disks:\n  - path: /\nremediator:\n  journal: ${ONLY_THE_REMEDIATOR_HAS_IT}\n"
                                          "  anything: [goes]\n"), environ={})
    assert cfg.disks[0].path == "/"
