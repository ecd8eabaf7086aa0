"""One storm must not starve everything: runs are claimed fairly across playbooks, one POST may
journal only so many alerts per playbook, and finished runs leave the journal after retention."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.remediator.kit import Site, StartApp, alert, fetch, payload, post, seed_cape, settled

QUICK = """
name: {name}
match: {{alertname: {alertname}}}
exclusive: false
steps:
  - name: look
    sql: {{system: cape, query: "select 1"}}
"""


def storm(n: int, alertname: str = "Storm") -> dict[str, Any]:
    return payload(*(alert(f"s{i}", alertname=alertname) for i in range(n)))


async def test_an_unrelated_playbook_runs_right_after_a_10000_alert_storm_is_journaled(
        site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    books = QUICK.format(name="storm", alertname="Storm"), QUICK.format(name="other", alertname="Other")
    client = await start(site.setup(*books, max_alerts_per_post=10000, max_body_bytes=16 * 1024 * 1024))
    status, body = await post(client, storm(10000))
    assert (status, body["journaled"]) == (200, 10000)
    await post(client, payload(alert("b1", alertname="Other")))
    await settled(site, 10001 - 9990 + 1, timeout=60)  # the other run and a few of the storm's
    [other] = await fetch(site.journal.dsn, "select id, started_at from taskmedic_runs where playbook = 'other'")
    assert other["started_at"] is not None
    ahead = await fetch(site.journal.dsn, "select count(*) as n from taskmedic_runs where playbook = 'storm' "
                                          "and started_at < $1", other["started_at"])
    # Claimed oldest first, it would wait for all 10,000; claimed fairly, for the few in flight.
    assert ahead[0]["n"] <= 10, ahead[0]["n"]


async def test_a_post_journals_at_most_max_alerts_per_post_per_playbook(site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    books = QUICK.format(name="storm", alertname="Storm"), QUICK.format(name="other", alertname="Other")
    client = await start(site.setup(*books, max_alerts_per_post=100, max_body_bytes=16 * 1024 * 1024),
                         run_worker=False)
    status, body = await post(client, payload(*storm(10000)["alerts"], alert("b1", alertname="Other")))
    assert (status, body) == (200, {"journaled": 101, "duplicates": 0, "unmatched": 0, "suppressed": 9900})
    counts = await fetch(site.journal.dsn, "select playbook, count(*) as n from taskmedic_runs group by 1 order by 1")
    assert [(r["playbook"], r["n"]) for r in counts] == [("other", 1), ("storm", 100)]
    async with client.get("/metrics") as r:
        assert 'taskmedic_alerts_over_cap_total{playbook="storm"} 9900.0' in await r.text()


async def test_retention_deletes_old_finished_runs_only(site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    book = QUICK.format(name="quick", alertname="TaskmedicStuckTasks")
    await start(site.setup(book), run_worker=False)  # creates the journal table
    await fetch(site.journal.dsn, """
        insert into taskmedic_runs (playbook, fingerprint, starts_at, alert_status, status, outcome,
                                    received_at, started_at, finished_at)
        values ('quick', 'old-done', now() - interval '41 days', 'firing', 'done', 'succeeded',
                now() - interval '40 days', now() - interval '40 days', now() - interval '40 days'),
               ('quick', 'recent-done', now() - interval '29 days', 'firing', 'done', 'failed',
                now() - interval '29 days', now() - interval '29 days', now() - interval '29 days'),
               ('gone-playbook', 'old-done-elsewhere', now() - interval '41 days', 'firing', 'done', 'skipped',
                now() - interval '40 days', now() - interval '40 days', now() - interval '40 days'),
               ('quick', 'old-pending', now() - interval '41 days', 'firing', 'pending', null,
                now() - interval '40 days', null, null)""")
    await start(site.setup(book, retention="30d"))
    end = time.monotonic() + 20
    while site.journal_rows("fingerprint, status") != ["recent-done|done", "old-pending|done"]:
        assert time.monotonic() < end, site.journal_rows("fingerprint, status")
        await asyncio.sleep(0.1)
