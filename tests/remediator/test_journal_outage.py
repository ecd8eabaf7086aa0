"""The journal database goes away and comes back: 503 while it is gone (Alertmanager retries),
accepted again after, and nothing received before is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.conftest import Database
from tests.remediator.kit import FAIL_STALE, Client, Site, StartApp, alert, count, payload, post, seed_cape, settled
from tests.services import PostgresServer, tempdir


@pytest.fixture(scope="module")
def journal_server() -> Iterator[PostgresServer]:
    """A journal server of its own, so stopping it disturbs no other test."""
    server = PostgresServer(tempdir("taskmedic-journal-") / "pg")
    server.init()
    server.start()
    yield server
    server.stop("immediate")


@pytest.fixture
def outage_site(site: Site, journal_server: PostgresServer) -> Iterator[Site]:
    site.journal = Database(journal_server, journal_server.create_database("journal"))
    yield site
    if not (journal_server.data / "postmaster.pid").exists():
        journal_server.start()


async def until_accepted(client: Client, body: dict[str, object], timeout: float = 15.0) -> list[int]:
    """Post like Alertmanager does: retry until 2xx; returns every status seen."""
    seen: list[int] = []
    for _ in range(int(timeout / 0.2)):
        status, _answer = await post(client, body)
        seen.append(status)
        if status == 200:
            return seen
        await asyncio.sleep(0.2)
    raise AssertionError(f"never accepted: {seen}")


async def readyz(client: Client) -> int:
    async with client.get("/readyz") as r:
        return r.status


async def test_journal_down_means_503_and_back_means_accepted_without_loss(
        outage_site: Site, journal_server: PostgresServer, start: StartApp) -> None:
    site = outage_site
    seed_cape(site.cape)
    client = await start(site.setup(FAIL_STALE))
    assert (await post(client, payload(alert("before"))))[0] == 200
    await settled(site)

    journal_server.stop("immediate")
    status, answer = await post(client, payload(alert("during")))
    assert (status, answer) == (503, {"error": "journal unavailable; retry later"})
    assert await readyz(client) == 503

    journal_server.start()
    seen = await until_accepted(client, payload(alert("during")))
    assert seen[-1] == 200 and set(seen) <= {200, 503}
    assert await readyz(client) == 200
    runs = await settled(site, 2)
    assert [(r["fingerprint"], r["outcome"]) for r in runs] == [("before", "succeeded"), ("during", "skipped")]
    assert count(site.cape, "status = 'failed_analysis'") == 5
    async with client.get("/metrics") as r:
        assert 'taskmedic_webhook_requests_total{code="503"}' in await r.text()


async def test_the_remediator_starts_while_the_journal_is_down(
        outage_site: Site, journal_server: PostgresServer, start: StartApp) -> None:
    site = outage_site
    seed_cape(site.cape)
    setup = site.setup(FAIL_STALE)
    journal_server.stop("immediate")
    client = await start(setup)
    async with client.get("/healthz") as r:
        assert r.status == 200
    assert await readyz(client) == 503
    assert (await post(client, payload()))[0] == 503
    journal_server.start()
    await until_accepted(client, payload())
    [run] = await settled(site)
    assert run["outcome"] == "succeeded"
