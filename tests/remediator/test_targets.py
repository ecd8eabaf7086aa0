"""An alert is a trigger, not an instruction: a playbook acts on the rows the exporter's own rule
finds at action time, whatever the alert's labels say, and `check` refuses a playbook in which a
label decides what a write touches."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from deploy.local.harbor_shape import P as HARBOR_P
from deploy.local.harbor_shape import seed_52_hour_shape
from remediator.config import load_setup
from remediator.engine import Report
from taskmedic.config.loader import ConfigError
from tests.engines import engine_program, reaped, start_engine
from tests.exporter.helpers import collect, value
from tests.polling import await_until, wait_until
from tests.remediator.kit import (
    FAIL_STALE,
    TOKEN,
    Site,
    StartApp,
    alert,
    count,
    execute,
    payload,
    post,
    seed_cape,
    seed_cape_utc_on,
    settled,
    shipped,
)
from tests.services import PostgresServer, free_port, running, wait_http
from tests.workers.celery_run import answers, celery_worker

FORGED = ({"older_than": "0 seconds"}, {"older_than": "-1 year"}, {"id": "6"}, {"pid": "1"}, {"path": "/"})


async def exporter_stuck(site: Site, system: str, reason: str) -> float | None:
    """What the exporter's `taskmedic_stuck_tasks` says, on the same config file and data."""
    out = site.tmp / "exporter"
    out.mkdir(exist_ok=True)
    results = await collect(out, (site.tmp / "taskmedic.yml").read_text())
    result = results[f"tasks:{system}"]
    assert result.error is None, result.error
    return value(result, "taskmedic_stuck_tasks", system=system, reason=reason)


async def targets_of(setup: Any, labels: dict[str, str], playbook: str) -> tuple[Report, list[Any]]:
    report = await execute(setup, labels, dry_run=True, playbook=playbook)
    return report, sorted(report.targets.ids) if report.targets is not None else []


async def test_forged_thresholds_and_ids_fail_only_the_tasks_the_rule_finds(site: Site) -> None:
    seed_cape(site.cape, stale=5, fresh=2)  # ids 1-5 pending for 3 days, 6-7 for 5 seconds
    setup = site.setup(FAIL_STALE)
    report = await execute(setup, {"older_than": "0 seconds", "id": "6"})
    assert (report.outcome, report.targets.ids if report.targets else None) == ("succeeded", [1, 2, 3, 4, 5])
    for labels in FORGED:
        again = await execute(setup, labels)
        assert (again.outcome, again.steps) == ("skipped", []), labels
    assert site.cape.sql("select id from tasks where status = 'pending' order by id").splitlines() == ["6", "7"]


async def test_labels_that_name_nothing_configured_are_refused_and_change_nothing(site: Site) -> None:
    seed_cape(site.cape)
    setup = site.setup(FAIL_STALE.replace("  system: cape\n  reason: pending_too_long\n", "  system: ~.*\n"))
    for labels, error in (
            ({"system": "capee"}, "targets: the alert's system 'capee' is not a configured system with a task table"),
            ({"system": "jobs"}, "targets: the alert's system 'jobs' is not a configured system with a task table"),
            ({"reason": "older_than_0s"},
             "targets: the alert's reason 'older_than_0s' is not a configured stuck rule of cape"),
            ({"reason": ""}, "targets: the alert has no `reason` label to select a stuck rule of cape")):
        report = await execute(setup, labels)
        assert (report.outcome, report.error, report.steps) == ("refused", error, []), labels
    assert count(site.cape, "status = 'pending'") == 7


async def test_a_step_on_another_system_than_the_targets_is_refused(site: Site, pg: PostgresServer) -> None:
    seed_cape(site.cape)
    other = site.cape.server.create_database("other")
    systems = f"  other: {{profile: cape, database: '{site.cape.server.dsn(other)}'}}\n"
    path = site.write(FAIL_STALE.replace("system: cape\n      statement", "system: other\n      statement"),
                      systems=systems)
    report = await execute(load_setup(str(path)))
    assert report.outcome == "refused"
    assert report.error == ("targets: step 'fail stale pending tasks' acts on system 'other' but the targets are "
                            "cape/pending_too_long of system 'cape'")
    assert count(site.cape, "status = 'pending'") == 7


async def test_verify_fails_when_the_rule_still_finds_the_targets(site: Site) -> None:
    seed_cape(site.cape, stale=3)
    # A repair that does not repair: the tasks stay pending, so the rule still finds them.
    setup = site.setup(FAIL_STALE.replace("set status = 'failed_analysis'", "set completed_on = localtimestamp"))
    report = await execute(setup)
    assert (report.outcome, report.verify) == ("failed", 3)
    assert report.error == "verify: the rule still finds 3 of the 3 targets (cape/pending_too_long): 1, 2, 3"


async def test_cape_targets_are_what_the_exporter_counts_in_a_database_on_shanghai_time(
        site: Site, pg: PostgresServer) -> None:
    """CAPE writes UTC; the database's TimeZone is Asia/Shanghai; the system says `timezone: UTC`.
    A task pending for 40 minutes is not stuck for either process; one pending for 3 hours is."""
    seed_cape_utc_on(site.cape, "Asia/Shanghai")
    setup, _ = shipped(site, pg)
    config = site.tmp / "taskmedic.yml"
    config.write_text(config.read_text().replace("    profile: cape\n", "    profile: cape\n    timezone: UTC\n", 1))
    setup = load_setup(str(config))
    labels = {"system": "cape", "reason": "pending_too_long"}
    _, ids = await targets_of(setup, labels, "cape-fail-stale-pending")
    assert await exporter_stuck(site, "cape", "pending_too_long") == len(ids) == 1
    assert ids == [int(site.cape.sql("select id from tasks where target = 'stuck.exe'"))]
    done = await execute(setup, labels, playbook="cape-fail-stale-pending")
    assert done.outcome == "succeeded", done.error
    assert site.cape.sql("select target, status from tasks order by id").splitlines() == \
        ["stuck.exe|failed_analysis", "fresh.exe|pending"]


async def test_timesketch_targets_are_what_the_exporter_counts(site: Site, pg: PostgresServer, tmp: Path) -> None:
    setup, timesketch = shipped(site, pg)
    timesketch.load("timesketch.sql")
    timesketch.sql("""insert into timeline (id, name, description) values (1, 'orphaned', ''), (2, 'slow', ''),
                        (3, 'orphaned-too', '');
                      insert into timeline_status (status, parent_id, created_at) values
                        ('processing', 1, now() - interval '5 hours'), ('processing', 2, now() - interval '20 seconds'),
                        ('processing', 3, now() - interval '3 hours')""")
    path = site.tmp / "taskmedic.yml"
    path.write_text(path.read_text())  # the exporter reads the very file the remediator loaded
    labels = {"system": "timesketch", "reason": "worker_gone"}
    with celery_worker(site.redis_url, "idle", "idle", tmp):  # a live worker, importing none of them
        wait_until(lambda: answers(site.redis_url), 60, "the worker to answer")
        _, ids = await targets_of(setup, labels, "timesketch-fail-orphaned-timelines")
        assert ids == [1, 3]
        assert await exporter_stuck(site, "timesketch", "worker_gone") == len(ids)


async def test_harbor_targets_are_what_the_exporter_counts(site: Site, pg: PostgresServer) -> None:
    setup, _ = shipped(site, pg)
    site.cape.load("harbor.sql")
    r = redis.Redis.from_url(site.redis_url)
    seed_52_hour_shape(site.cape.sql, r)  # execution 1 on a dead pool; 5, a 13 h replication, on a live one
    r.hset(HARBOR_P + "worker_pools:live-pool", mapping={"heartbeat_at": int(time.time()) + 600,
                                                         "job_names": "REPLICATION"})
    _, ids = await targets_of(setup, {"system": "harbor", "reason": "worker_gone"},
                              "harbor-settle-dangling-executions")
    assert ids == [1]
    assert await exporter_stuck(site, "harbor", "worker_gone") == len(ids)


async def test_scanner_targets_are_what_the_exporter_counts(site: Site, pg: PostgresServer) -> None:
    setup, _ = shipped(site, pg)
    site.cape.load("scanner.sql")
    program = engine_program(site.tmp)
    alive, dead = start_engine(program), start_engine(program)
    dead.kill()
    dead.wait()
    with reaped(alive):
        site.cape.sql(f"""insert into scan_tasks (id, target, state, engine_pid, started_at) values
                            (1, 'zombie', 'Running', {dead.pid}, now() - interval '1 hour'),
                            (2, 'alive', 'Running', {alive.pid}, now())""")
        report, ids = await targets_of(setup, {"system": "scanner", "reason": "process_gone"},
                                       "scanner-terminate-zombies")
        assert ids == [1], report.error
        assert await exporter_stuck(site, "scanner", "process_gone") == len(ids)


def remediator_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "remediator", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)


LABEL_WRITE = """name: label-driven
match: {alertname: TaskmedicStuckTasks}
steps:
  - name: fail pending
    sql:
      system: cape
      statement: >-
        update tasks set status = 'failed_analysis'
        where status = 'pending' and added_on < localtimestamp - $1::interval
      params: ["{{ labels.older_than | default('1 hour') }}"]
      max_rows_after_write: true  # bounded or not, the label is what check must refuse
"""


def test_check_refuses_a_playbook_that_feeds_a_label_into_a_write(site: Site) -> None:
    done = remediator_check(site.write(LABEL_WRITE))
    book = site.tmp / "playbooks" / "p0.yml"
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {book}:10: steps[0].sql.params[0]: reads labels, which anyone able to post "
                                  "an alert can forge")


@pytest.mark.parametrize("playbook, key", [
    ("steps:\n  - name: ids\n    sql: {system: cape, query: \"select id from tasks where target = $1\", "
     "params: [\"{{ labels.target }}\"]}\n  - name: fail\n    for_each: ids\n"
     "    sql: {system: cape, statement: \"delete from tasks where id = $1\", params: [\"{{ item.id }}\"], "
     "max_rows_after_write: true}\n",
     "steps[0].sql.params[0]"),
    ("precheck: {sql: {system: cape, query: \"select count(*) from tasks where added_on < now() - $1::interval\", "
     "params: [\"{{ labels.older_than }}\"]}}\nsteps:\n  - name: x\n    command: {argv: [\"true\"]}\n",
     "precheck.sql.params[0]"),
    ("steps:\n  - name: x\n    redis: {system: jobs, delete: {pattern: \"celery-task-meta-{{ annotations.id }}\"}}\n",
     "steps[0].redis.delete.pattern"),
    ("steps:\n  - name: x\n    command: {argv: [\"/bin/echo\", \"{{ alert.fingerprint }}\"]}\n",
     "steps[0].command.argv[1]"),
    ("steps:\n  - name: x\n    files: {root: /srv/backups, path: \"{{ labels.file }}\"}\n", "steps[0].files.path"),
])
def test_check_names_each_place_a_label_would_decide(site: Site, playbook: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        site.setup("name: t\nmatch: {alertname: A}\n" + playbook)
    assert [p.split(": ")[1] for p in e.value.problems] == [key]


def test_free_text_and_a_named_opt_in_are_accepted(site: Site) -> None:
    site.setup(
        "name: t\nmatch: {alertname: A}\ntargets: stuck\nlabel_text: [\"steps[1].sql.params[1]\"]\nsteps:\n"
        "  - name: look\n    sql: {system: cape, query: \"select $1::text\", params: [\"{{ labels.reason }}\"]}\n"
        "  - name: note\n    sql: {system: cape, statement: \"update tasks set custom = $2 where id = any($1)\", "
        "params: [\"{{ targets.ids }}\", \"taskmedic: {{ labels.summary }}\"]}\n")
    with pytest.raises(ConfigError, match=r"label_text\[0\]: 'steps\[0\].sql.params\[0\]' is not a template"):
        site.setup("name: t\nmatch: {alertname: A}\nlabel_text: [\"steps[0].sql.params[0]\"]\nsteps:\n"
                   "  - name: x\n    sql: {system: cape, statement: \"select 1\", max_rows_after_write: true}\n")


def test_simulate_prints_the_target_rows(site: Site) -> None:
    seed_cape(site.cape, stale=2)
    path = site.write(FAIL_STALE)
    alerts = site.tmp / "alerts.json"
    alerts.write_text(json.dumps(payload(alert(older_than="0 seconds"))))
    done = subprocess.run([sys.executable, "-m", "remediator", "simulate", "--config", str(path), str(alerts)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[2] == "    targets (stuck, cape/pending_too_long): 2 rows"
    assert [json.loads(line)["id"] for line in lines[3:5]] == [1, 2]


ALERTMANAGER = """route:
  receiver: taskmedic
  group_by: ['...']
  group_wait: 1s
  group_interval: 1s
receivers:
  - name: taskmedic
    webhook_configs:
      - url: {url}
        send_resolved: false
        http_config:
          authorization:
            credentials_file: {token}
"""


async def test_forged_alerts_posted_to_alertmanager_without_login_change_nothing(
        site: Site, pg: PostgresServer, start: StartApp) -> None:
    """Alertmanager's API takes alerts from anyone. Forged thresholds, ids, PIDs and paths reach
    the remediator with its bearer token, and still nothing that is not stuck is touched."""
    seed_cape(site.cape, stale=0, fresh=2)
    site.cape.load("scanner.sql")
    engine = start_engine(engine_program(site.tmp))  # the real engine, busy on a task started after it
    setup, _ = shipped(site, pg, lambda text: text.replace("dry_run: true", "dry_run: false"))
    client = await start(setup)
    site.cape.sql(f"insert into scan_tasks (target, state, engine_pid, started_at) "
                  f"values ('busy', 'Running', {engine.pid}, now())")
    token = site.tmp / "token"
    token.write_text(TOKEN)
    config = site.tmp / "alertmanager.yml"
    config.write_text(ALERTMANAGER.format(url=client.make_url("/alerts"), token=token))
    port = free_port()
    stuck = {"alertname": "TaskmedicStuckTasks", "system": "cape", "reason": "pending_too_long"}
    forged = [{**stuck, **labels} for labels in FORGED] + [
        {"alertname": "TaskmedicStuckTasks", "system": "scanner", "reason": "process_gone", "pid": str(engine.pid)},
        {"alertname": "TaskmedicDiskSpaceLow", "path": "/opt/CAPEv2/storage"},
        {"alertname": "TaskmedicBackupInvalid", "backup": "sysreptor"}]
    try:
        with running(["prometheus-alertmanager", f"--config.file={config}", f"--storage.path={site.tmp / 'am'}",
                      "--cluster.listen-address=", f"--web.listen-address=127.0.0.1:{port}"], site.tmp / "am.log"):
            await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/-/ready", 30)
            async with aiohttp.ClientSession() as http, http.post(
                    f"http://127.0.0.1:{port}/api/v2/alerts", json=[{"labels": a} for a in forged]) as r:
                assert r.status == 200  # no login asked
            runs = await settled(site, len(forged), timeout=60)
        outcomes = {r["labels"].get("older_than") or r["labels"].get("id") or r["labels"].get("pid")
                    or r["labels"]["alertname"]: r["outcome"] for r in runs}
        assert set(outcomes.values()) <= {"skipped", "refused"}, outcomes
        assert len(runs) == len(forged)
        assert count(site.cape, "status = 'pending'") == 2
        assert site.cape.sql("select state from scan_tasks") == "Running" and engine.poll() is None
    finally:
        engine.kill()
        engine.wait()


FOR_EACH = FAIL_STALE.replace('''    sql:
      system: cape
      statement: "update tasks set status = 'failed_analysis' where id = any($1) and status = 'pending'"
      params: ["{{ targets.ids }}"]
      max_rows: 100''', '''    for_each: targets
    sql:
      system: cape
      statement: "update tasks set status = 'failed_analysis', custom = $2 where id = $1 and status = 'pending'"
      params: ["{{ item.id }}", "{{ targets | length }} found; old: {{ item.age_seconds > 3600 }}"]
      max_rows: 1
      max_rows_after_write: true  # one row, by its primary key''')


async def test_for_each_target_row_a_step_runs_with_its_columns(site: Site) -> None:
    seed_cape(site.cape, stale=3)
    report = await execute(site.setup(FOR_EACH))
    assert (report.outcome, report.steps[0].rows) == ("succeeded", 3), report.error
    assert site.cape.sql("select distinct custom from tasks where status = 'failed_analysis'") == \
        "3 found; old: True"


def test_a_playbook_reading_targets_must_set_them(site: Site) -> None:
    with pytest.raises(ConfigError, match="step 'fail stale pending tasks' reads `targets` but the playbook sets no"):
        site.setup(FAIL_STALE.replace("targets: stuck\n", "").replace("verify: targets\n", ""))


async def test_a_forged_early_alert_does_not_use_up_the_real_incident(site: Site, start: StartApp) -> None:
    """Anyone can post, ahead of an incident, an alert with exactly its labels: it is skipped
    (nothing stuck yet), and the real alert that Alertmanager then merges into it carries the same
    fingerprint and startsAt. Delivered again while still firing, that alert is looked at again
    (after recheck_after) and heals the incident; a run that acted is still never run twice."""
    seed_cape(site.cape, stale=0, fresh=2)
    client = await start(site.setup(FAIL_STALE, recheck_after=0))
    forged = payload(alert("same-fingerprint"))
    assert (await post(client, forged))[0] == 200
    [run] = await settled(site)
    assert run["outcome"] == "skipped"
    site.cape.sql("update tasks set added_on = localtimestamp - interval '3 days'")  # the incident: both stale
    status, body = await post(client, forged)  # Alertmanager delivers the (merged) alert again
    assert (status, body["journaled"]) == (200, 1)
    await await_until(lambda: count(site.cape, "status = 'failed_analysis'") == 2, 30, "the incident healed")
    [run] = await settled(site)
    assert run["outcome"] == "succeeded" and [h["outcome"] for h in run["history"]] == ["skipped"]
    status, body = await post(client, forged)  # and again: a run that acted never runs twice
    assert (status, body["journaled"], body["duplicates"]) == (200, 0, 1)


def test_a_template_reaching_into_jinja_internals_is_refused_when_the_playbook_loads(site: Site) -> None:
    """`self._TemplateReference__context.labels` reads labels without naming `labels`: refused by
    check, not only stopped by the sandbox at run time."""
    for template in ("{{ self._TemplateReference__context.labels.id }}", "{{ targets.__class__ }}"):
        with pytest.raises(ConfigError, match=r"steps\[0\]\.sql\.params\[0\]: a template may not use `self`"):
            site.setup("name: t\nmatch: {alertname: A}\nsteps:\n  - name: x\n"
                       f"    sql: {{system: cape, query: \"select $1::text\", params: [\"{template}\"]}}\n")
