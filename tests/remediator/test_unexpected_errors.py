"""Errors nobody foresaw — a library raising something unlisted, an unreadable journal row — fail
one run (or skip one row) and are logged with their traceback; the replica keeps working."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from aiohttp import web

from remediator.server import STATE
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
    trusting_labels,
)


def book(name: str, step: str) -> str:
    return trusting_labels(f"name: {name}\nmatch: {{alertname: TaskmedicStuckTasks}}\nsteps:\n"
                           f"  - name: act\n    {step}\n")


async def outcomes(site: Site, timeout: float = 20.0, n: int = 1) -> dict[str, tuple[str, str | None]]:
    """playbook → (outcome, error) once `n` runs are done (read without decoding any JSON)."""
    end = time.monotonic() + timeout
    while True:
        rows = await fetch(site.journal.dsn, "select playbook, outcome, error from taskmedic_runs "
                                             "where status = 'done' order by id")
        if len(rows) >= n or time.monotonic() > end:
            return {r["playbook"]: (r["outcome"], r["error"]) for r in rows}
        await asyncio.sleep(0.1)


async def readyz(client: Client) -> tuple[int, Any]:
    async with client.get("/readyz") as r:
        return r.status, await r.json()


async def test_an_unforeseen_error_in_a_step_fails_the_run_with_its_type_and_message(
        site: Site, start: StartApp, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="taskmedic.remediator")
    async def ok(_request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    server = await aiohttp_server(app)
    # A secret read from a file into the environment, trailing newline and all: aiohttp refuses
    # the header with a ValueError, which no step lists.
    monkeypatch.setenv("API_TOKEN", "s3cret\n")
    http = book("http", f'http: {{url: "http://127.0.0.1:{server.port}/x", '
                        'headers: {Authorization: "Token ${API_TOKEN}"}}')
    superscript = book("pid", 'process: {pid: "{{ labels.pid }}", match: "scan-engine"}')
    client = await start(site.setup(http, superscript))
    assert (await post(client, payload(alert(pid="²"))))[0] == 200
    done = await outcomes(site, n=2)
    assert done["http"][0] == "failed"
    assert (done["http"][1] or "").startswith("step 'act': ValueError: ")
    assert done["pid"] == ("failed", "step 'act': pid '²' is not a process id")
    [logged] = [r for r in caplog.records if r.getMessage() == "step act: unexpected error"]
    assert logged.exc_info is not None and logged.exc_info[0] is ValueError
    assert (await readyz(client))[0] == 200


async def test_an_unreadable_journal_row_does_not_stop_the_replica_claiming_the_next(
        site: Site, start: StartApp, caplog: pytest.LogCaptureFixture) -> None:
    seed_cape(site.cape)
    client = await start(site.setup(FAIL_STALE))
    assert (await readyz(client))[0] == 200  # the journal table exists now
    # Valid jsonb that Python's json cannot read (an integer of more than 4300 digits), written
    # by some other tool: claiming it raises ValueError after the row was already taken.
    site.journal.sql("insert into taskmedic_runs (playbook, fingerprint, starts_at, alert_status, labels) "
                     "values ('cape-fail-stale-pending', 'poison', now(), 'firing', "
                     "('{\"n\": ' || repeat('9', 5000) || '}')::jsonb)")
    assert (await post(client, payload(alert("good"))))[0] == 200
    done = await outcomes(site)
    assert done == {"cape-fail-stale-pending": ("succeeded", None)}
    assert count(site.cape, "status = 'failed_analysis'") == 5
    assert any(r.getMessage().startswith("unexpected error while claiming a run") and r.exc_info
               for r in caplog.records)
    assert (await readyz(client))[0] == 200


async def test_readyz_is_503_once_a_worker_loop_has_stopped(site: Site, start: StartApp) -> None:
    client = await start(site.setup(FAIL_STALE))
    assert (await readyz(client))[0] == 200
    worker = client.app[STATE].worker
    assert worker is not None
    claim = next(loop for loop in worker._loops if loop.get_name() == "claim")
    claim.cancel()  # the only way left for it to end
    await asyncio.gather(claim, return_exceptions=True)
    assert await readyz(client) == (503, {"status": "worker stopped", "loops": ["claim"]})
