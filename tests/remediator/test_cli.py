"""`taskmedic-remediator check` and `simulate` as an operator runs them: exit codes, errors that
name the file, line and key, and a simulation that shows real counts and changes nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.remediator.kit import FAIL_STALE, Site, alert, count, payload, seed_cape


def remediator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "remediator", *args], capture_output=True, text=True, timeout=60)


def test_help_usage_and_a_valid_config() -> None:
    for args in (["--help"], ["check", "--help"], ["simulate", "--help"]):
        assert remediator(*args).returncode == 0
    assert remediator("check").returncode == 2
    assert remediator("simulate", "--config", "x.yml").returncode == 2  # ALERTS.json missing
    assert remediator("--log-format", "xml", "check", "--config", "x.yml").returncode == 2


def test_check_accepts_the_contract_playbook(site: Site) -> None:
    path = site.write(FAIL_STALE)
    done = remediator("check", "--config", str(path))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.strip() == f"{path}: valid (2 systems, 1 playbooks: cape-fail-stale-pending)"


def test_playbook_mistakes_are_reported_with_file_line_and_key(site: Site) -> None:
    broken = """\
name: broken
match: {alertname: "~Taskmedic(Stuck"}
on: fired
stpes: []
steps:
  - name: one
    sql: {system: capee, statement: "update tasks set status = '{{ labels.status }}'"}
  - name: two
    redis: {system: cape, flushdb: {}}
"""
    path = site.write(broken, FAIL_STALE.replace("cape-fail-stale-pending", "broken"))
    done = remediator("check", "--config", str(path))
    assert done.returncode == 1
    book = site.tmp / "playbooks" / "p0.yml"
    assert done.stderr.splitlines() == [
        f"error: {book}:2: match: alertname: not a valid regular expression: missing ), unterminated subpattern "
        "at position 9",
        f"error: {book}:3: on: Input should be 'firing', 'resolved' or 'any' (got 'fired')",
        f"error: {book}:7: steps[0].sql: SQL text is never templated: write $1, $2 ... and put the values in "
        "`params`",
        f"error: {book}:9: steps[1].redis.flushdb: unknown key; did you mean 'lpush'?",
        f"error: {book}:4: stpes: unknown key; did you mean 'steps'?",
    ]


def test_unknown_systems_and_duplicate_names_are_caught_across_files(site: Site) -> None:
    other = FAIL_STALE.replace("system: cape\n      statement", "system: capee\n      statement")
    path = site.write(FAIL_STALE, other)
    done = remediator("check", "--config", str(path))
    first, second = site.tmp / "playbooks" / "p0.yml", site.tmp / "playbooks" / "p1.yml"
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: {second}:12: steps[0].sql.system: unknown system 'capee'; did you mean 'cape'?",
        f"error: {second}:2: name: playbook 'cape-fail-stale-pending' is also defined in {first}"]


def test_a_redis_step_on_a_system_without_redis_is_an_error(site: Site) -> None:
    book = ("name: r\nmatch: {alertname: X}\nsteps:\n  - name: r\n"
            "    redis: {system: cape, lrem: {key: q, value: v}}\n")
    done = remediator("check", "--config", str(site.write(book)))
    assert done.returncode == 1
    assert done.stderr.strip().endswith("p0.yml:5: steps[0].redis.system: system 'cape' has no `redis` configured")


def test_a_missing_remediator_section_and_an_unset_secret_are_errors(site: Site, tmp: Path) -> None:
    config = tmp / "only-exporter.yml"
    config.write_text(f"systems:\n  cape: {{profile: cape, database: '{site.cape.dsn}'}}\n")
    done = remediator("check", "--config", str(config))
    assert (done.returncode, done.stderr.strip()) == (1, f"error: {config}:1: remediator: required key is missing")
    path = site.write(FAIL_STALE, auth={"bearer_token": "${TASKMEDIC_UNSET_TOKEN}"})
    done = remediator("check", "--config", str(path))
    assert done.returncode == 1
    assert "environment variable TASKMEDIC_UNSET_TOKEN is not set" in done.stderr


def test_simulate_shows_matches_and_real_counts_without_changing_anything(site: Site) -> None:
    seed_cape(site.cape)
    path = site.write(FAIL_STALE)
    alerts = site.tmp / "alerts.json"
    alerts.write_text(json.dumps(payload(alert("f1"), alert("f2", alertname="SomethingElse"))))
    done = remediator("simulate", "--config", str(path), str(alerts))
    assert done.returncode == 0, done.stderr
    AGE = "AGE"
    assert re.sub(r'"age_seconds": [0-9.]+', '"age_seconds": AGE', done.stdout).splitlines() == [
        "alert 1/2: TaskmedicStuckTasks (firing, fingerprint f1)",
        "  playbook cape-fail-stale-pending: dry_run",
        "    targets (stuck, cape/pending_too_long): 5 rows",
        *(f'      {{"id": {i}, "status": "pending", "age_seconds": {AGE}}}' for i in range(1, 6)),
        "    step 'fail stale pending tasks' (sql): dry_run, 5 rows",
        '      system: "cape"',
        '      params: [[1, 2, 3, 4, 5]]',
        "      rows: 5",
        "alert 2/2: SomethingElse (firing, fingerprint f2)",
        "  no playbook matches"]
    assert count(site.cape, "status = 'pending'") == 7
    as_json = remediator("simulate", "--config", str(path), str(alerts), "--output", "json")
    assert json.loads(as_json.stdout)[0]["runs"][0]["steps"][0]["rows"] == 5


def test_simulate_rejects_a_bad_alerts_file_naming_it(site: Site) -> None:
    path = site.write(FAIL_STALE)
    alerts = site.tmp / "alerts.json"
    alerts.write_text('[{"status": "firing"}]')
    done = remediator("simulate", "--config", str(path), str(alerts))
    assert done.returncode == 1
    assert f"error: {alerts}: " in done.stderr and "labels: Field required" in done.stderr
