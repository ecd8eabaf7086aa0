"""Guards raced by many workers and two replicas: cooldown and max_runs_per_hour are reservations
in the journal, so concurrent runs of a non-exclusive playbook cannot all slip past them."""

from __future__ import annotations

from collections import Counter

from tests.remediator.kit import Site, StartApp, alert, payload, post, seed_cape, settled

# Not exclusive: every worker of every replica may run it at once; the sleep keeps them overlapping.
RACY = """
name: racy
match: {{alertname: TaskmedicStuckTasks}}
exclusive: false
{guard}
steps:
  - name: take a while
    sql: {{system: cape, query: "select pg_sleep(1)"}}
"""


def outcomes(runs: list[dict[str, object]]) -> Counter[object]:
    return Counter(r["outcome"] for r in runs)


async def test_eight_alerts_under_max_runs_per_hour_3_act_three_times_across_two_replicas(
        site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    book = RACY.format(guard="max_runs_per_hour: 3")
    # Two workers each: while replica a's two are busy, replica b's take the rest.
    first = await start(site.setup(book, workers=2, replica="a"))
    await start(site.setup(book, workers=2, replica="b"))
    await post(first, payload(*(alert(f"f{i}") for i in range(8))))
    runs = await settled(site, 8)
    assert outcomes(runs) == {"succeeded": 3, "suppressed": 5}, runs
    assert {r["error"] for r in runs if r["outcome"] == "suppressed"} == {
        "circuit open: 3 runs in the last hour (max_runs_per_hour 3)"}
    assert len({r["replica"] for r in runs}) == 2  # both replicas took part


async def test_one_alert_refiring_four_times_under_a_cooldown_acts_once(site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    client = await start(site.setup(RACY.format(guard="cooldown: 10m"), workers=4))
    await post(client, payload(*(alert("same", f"2026-11-22T10:0{i}:00Z") for i in range(4))))
    runs = await settled(site, 4)
    assert outcomes(runs) == {"succeeded": 1, "suppressed": 3}, runs
    assert all(r["error"] == "cooldown: this alert was acted on less than 600s ago"
               for r in runs if r["outcome"] == "suppressed")


async def test_a_refused_run_does_not_use_up_the_circuit(site: Site, start: StartApp) -> None:
    seed_cape(site.cape, stale=5)
    book = """
name: too-big
match: {alertname: TaskmedicStuckTasks}
exclusive: false
max_runs_per_hour: 1
steps:
  - name: read too much
    sql: {system: cape, query: "select id from tasks", max_rows: 2}
"""
    client = await start(site.setup(book, workers=1))  # one after another: a run in flight counts
    await post(client, payload(*(alert(f"f{i}") for i in range(3))))
    runs = await settled(site, 3)
    assert outcomes(runs) == {"refused": 3}, runs  # nothing acted, so nothing counted
