"""Each guard as an operator meets it: dry run, max_rows, cooldown, circuit breaker, precheck,
verify, one run per playbook at a time, and runs left behind by a replica that died."""

from __future__ import annotations

import itertools

from tests.remediator.kit import (
    FAIL_STALE,
    Client,
    Site,
    StartApp,
    alert,
    count,
    fetch,
    payload,
    post,
    seed_cape,
    settled,
)

STALE = "status = 'pending' and added_on < localtimestamp - interval '1 hour'"


def with_keys(extra: str, playbook: str = FAIL_STALE) -> str:
    return playbook + extra


async def metrics_text(client: Client) -> str:
    async with client.get("/metrics") as r:
        return await r.text()


async def test_global_dry_run_changes_nothing_and_reports_the_real_count(site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    client = await start(site.setup(FAIL_STALE, dry_run=True))
    await post(client, payload())
    [run] = await settled(site)
    assert (run["outcome"], run["dry_run"], run["steps"][0]["rows"]) == ("dry_run", True, 5)
    assert run["steps"][0]["detail"]["params"] == [[1, 2, 3, 4, 5]]  # the ids the rule found, bound as an array
    assert count(site.cape, STALE) == 5


async def test_a_playbook_can_be_dry_run_on_its_own(site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    client = await start(site.setup(with_keys("dry_run: true\n")))
    await post(client, payload())
    [run] = await settled(site)
    assert (run["outcome"], run["steps"][0]["outcome"], run["steps"][0]["rows"]) == ("dry_run", "dry_run", 5)
    assert count(site.cape, STALE) == 5


async def test_more_targets_than_max_rows_is_refused_before_any_write(site: Site, start: StartApp) -> None:
    seed_cape(site.cape, stale=150)
    client = await start(site.setup(FAIL_STALE))
    await post(client, payload())
    [run] = await settled(site)
    assert (run["outcome"], run["steps"]) == ("refused", [])
    assert run["error"] == ("targets: 150 targets (cape/pending_too_long), more than step 'fail stale pending tasks' "
                            "may touch (max_rows 100); nothing was changed")
    assert count(site.cape, STALE) == 150


async def test_cooldown_suppresses_a_new_occurrence_of_the_same_alert(site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    client = await start(site.setup(with_keys("cooldown: 10m\n")))
    await post(client, payload(alert("f1", "2026-11-22T10:00:00Z")))
    await settled(site)
    await post(client, payload(alert("f1", "2026-11-22T10:05:00Z"), alert("f2", "2026-11-22T10:05:00Z")))
    runs = await settled(site, 3)
    assert [(r["fingerprint"], r["outcome"]) for r in runs] == [
        ("f1", "succeeded"), ("f1", "suppressed"), ("f2", "skipped")]  # f2: the rule finds nothing left
    assert runs[1]["error"].startswith("cooldown: this alert was acted on less than 600s ago")


async def test_circuit_breaker_suppresses_and_opens_the_circuit_gauge(site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    # Each run fails only the oldest target, so every run has something to act on.
    one_at_a_time = FAIL_STALE.replace("verify: targets\n", "").replace(
        "where id = any($1) and status = 'pending'", "where id = (select min(i) from unnest($1::integer[]) as i)")
    client = await start(site.setup(with_keys("max_runs_per_hour: 2\n", one_at_a_time)))
    assert 'taskmedic_playbook_circuit_open{playbook="cape-fail-stale-pending"} 0.0' in await metrics_text(client)
    await post(client, payload(*(alert(f"f{i}") for i in range(3))))
    runs = await settled(site, 3)
    assert sorted(r["outcome"] for r in runs) == ["succeeded", "succeeded", "suppressed"]
    [suppressed] = [r for r in runs if r["outcome"] == "suppressed"]
    assert suppressed["error"] == "circuit open: 2 runs in the last hour (max_runs_per_hour 2)"
    text = await metrics_text(client)
    assert 'taskmedic_playbook_circuit_open{playbook="cape-fail-stale-pending"} 1.0' in text
    assert 'taskmedic_remediation_runs_total{outcome="suppressed",playbook="cape-fail-stale-pending"} 1.0' in text


async def test_precheck_skips_when_there_is_nothing_to_do(site: Site, start: StartApp) -> None:
    seed_cape(site.cape, stale=0)
    precheck = f"precheck:\n  sql: {{system: cape, query: \"select count(*) from tasks where {STALE}\"}}\n"
    client = await start(site.setup(with_keys(precheck)))
    await post(client, payload())
    [run] = await settled(site)
    assert (run["outcome"], run["steps"]) == ("skipped", [])


async def test_verify_fails_a_run_whose_repair_did_not_hold(site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    partial = f"""
name: cape-fail-two
match: {{alertname: TaskmedicStuckTasks}}
steps:
  - name: fail only two
    sql:
      system: cape
      keys: "select id from tasks where status = 'pending' order by id limit 2"
      statement: "update tasks set status = 'failed_analysis' where id = any($1)"
verify:
  sql: {{system: cape, query: "select count(*) from tasks where {STALE}", expect: 0}}
"""
    client = await start(site.setup(partial))
    await post(client, payload())
    [run] = await settled(site)
    assert run["outcome"] == "failed"
    assert run["error"] == "verify: the problem remains (check says 3, healthy is 0)"


async def test_one_playbook_runs_one_at_a_time_across_workers(site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    slow = """
name: slow
match: {alertname: TaskmedicStuckTasks}
steps:
  - name: take a while
    sql: {system: cape, query: "select pg_sleep(0.4)"}
"""
    client = await start(site.setup(slow, workers=3))
    await post(client, payload(*(alert(f"f{i}") for i in range(3))))
    runs = await settled(site, 3)
    spans = sorted((r["started_at"], r["finished_at"]) for r in runs)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans


async def test_a_run_left_by_a_dead_replica_is_marked_interrupted(site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    client = await start(site.setup(FAIL_STALE, lease=1))
    await post(client, payload())
    await settled(site)
    await fetch(site.journal.dsn, """insert into taskmedic_runs (playbook, fingerprint, starts_at, alert_status,
                                         status, replica, lease_until, attempts, started_at)
                                     values ('cape-fail-stale-pending', 'f9', now(), 'firing', 'running', 'gone:1',
                                             now() - interval '5 seconds', 1, now() - interval '1 minute')""")
    runs = await settled(site, 2)
    assert (runs[1]["outcome"], runs[1]["error"]) == ("interrupted", "lease expired: replica gone:1 stopped mid-run")
    assert runs[1]["history"][0]["replica"] == "gone:1"


async def test_an_interrupted_run_is_retried_when_the_playbook_says_it_is_safe(site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    await start(site.setup(with_keys("retry_interrupted: true\n"), lease=1))  # creates the journal table
    await fetch(site.journal.dsn, """
        insert into taskmedic_runs (playbook, fingerprint, starts_at, alert_status, labels, status, replica,
                                    lease_until, attempts)
        values ('cape-fail-stale-pending', 'f9', now(), 'firing',
                '{"alertname": "TaskmedicStuckTasks", "system": "cape", "reason": "pending_too_long"}',
                'running', 'gone:1', now() - interval '5 seconds', 1)""")
    [run] = await settled(site)
    assert (run["outcome"], run["attempts"], len(run["history"])) == ("succeeded", 2, 1)
    assert count(site.cape, STALE) == 0


async def test_runs_with_nothing_to_do_are_skipped_and_do_not_open_the_circuit(site: Site, start: StartApp) -> None:
    """Alerts anyone can post to Alertmanager, for a playbook without targets whose steps find
    nothing: each run is `skipped`, not `succeeded`, so they cannot use up max_runs_per_hour
    ahead of a real incident."""
    seed_cape(site.cape, stale=0)
    book = ("name: sweep\nmatch: {alertname: TaskmedicStuckTasks}\nmax_runs_per_hour: 2\nsteps:\n"
            "  - name: fail stale\n    sql: {system: cape, statement: \"update tasks set status = 'failed_analysis' "
            f"where {STALE}\", max_rows_after_write: true}}\n")
    client = await start(site.setup(book))
    for i in range(4):
        assert (await post(client, payload(alert(f"forged-{i}"))))[0] == 200
    runs = await settled(site, 4)
    assert [r["outcome"] for r in runs] == ["skipped"] * 4
    site.cape.sql("update tasks set added_on = localtimestamp - interval '3 days'")  # the real incident
    assert (await post(client, payload(alert("real"))))[0] == 200
    runs = await settled(site, 5)
    assert runs[-1]["outcome"] == "succeeded", runs[-1]["error"]
    assert count(site.cape, "status = 'failed_analysis'") == 2
