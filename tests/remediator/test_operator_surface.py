"""What an operator looks at: /runs, /runs/{id}, /healthz, /readyz, /metrics and the run logs."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.remediator.kit import AUTH, FAIL_STALE, Client, Site, StartApp, alert, payload, post, seed_cape, settled


async def get(client: Client, path: str, auth: bool = True) -> tuple[int, Any]:
    async with client.get(path, headers=AUTH if auth else {}) as r:
        return r.status, await r.json(content_type=None) if r.content_type == "application/json" else await r.text()


async def test_the_audit_trail_lists_and_filters_runs(site: Site, start: StartApp) -> None:
    seed_cape(site.cape, stale=150)
    client = await start(site.setup(FAIL_STALE))
    await post(client, payload(alert("f1")))
    await settled(site)
    site.cape.sql("update tasks set status = 'reported' where id > 5")  # now 5: few enough to act on
    await post(client, payload(alert("f2")))
    await settled(site, 2)

    status, body = await get(client, "/runs")
    assert status == 200
    assert [(r["fingerprint"], r["outcome"]) for r in body["runs"]] == [("f2", "succeeded"), ("f1", "refused")]
    status, body = await get(client, "/runs?outcome=refused&playbook=cape-fail-stale-pending&limit=5")
    [refused] = body["runs"]
    assert (refused["fingerprint"], refused["labels"]["reason"]) == ("f1", "pending_too_long")
    assert refused["error"].startswith("targets: 150 targets (cape/pending_too_long), more than step")
    assert await get(client, f"/runs/{refused['id']}") == (200, refused)
    assert (await get(client, "/runs/999999"))[0] == 404
    assert (await get(client, "/runs/abc"))[0] == 400
    assert (await get(client, "/runs?outcome=exploded"))[0] == 400
    assert (await get(client, "/runs?limit=0"))[0] == 400


async def test_the_audit_trail_needs_the_webhook_credentials(site: Site, start: StartApp) -> None:
    client = await start(site.setup(FAIL_STALE), run_worker=False)
    assert (await get(client, "/runs", auth=False))[0] == 401
    assert (await get(client, "/runs/1", auth=False))[0] == 401
    open_runs = await start(site.setup(FAIL_STALE, auth={"bearer_token": "x", "protect_runs": False}), False)
    assert (await get(open_runs, "/runs", auth=False))[0] == 200


async def test_health_readiness_and_metrics(site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    client = await start(site.setup(FAIL_STALE))
    status, health = await get(client, "/healthz", auth=False)
    assert (status, health["status"], health["playbooks"]) == (200, "ok", ["cape-fail-stale-pending"])
    assert (await get(client, "/readyz", auth=False)) == (200, {"status": "ready"})
    await post(client, payload())
    await settled(site)
    status, text = await get(client, "/metrics", auth=False)
    assert 'taskmedic_remediation_runs_total{outcome="succeeded",playbook="cape-fail-stale-pending"} 1.0' in text
    assert 'taskmedic_remediation_runs_total{outcome="failed",playbook="cape-fail-stale-pending"} 0.0' in text
    assert 'taskmedic_remediation_duration_seconds_count{playbook="cape-fail-stale-pending"} 1.0' in text
    assert 'taskmedic_webhook_requests_total{code="200"} 1.0' in text
    assert "taskmedic_remediator_journal_up 1.0" in text


async def test_every_run_and_step_is_logged_with_its_fields(site: Site, start: StartApp,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    seed_cape(site.cape)
    caplog.set_level(logging.INFO, logger="taskmedic.remediator")
    client = await start(site.setup(FAIL_STALE))
    await post(client, payload())
    [run] = await settled(site)
    step = next(r for r in caplog.records if getattr(r, "step", None) == "fail stale pending tasks")
    assert (step.outcome, step.rows, step.run_id) == ("ok", 5, run["id"])  # type: ignore[attr-defined]
    done = next(r for r in caplog.records if r.getMessage() == "run cape-fail-stale-pending: succeeded")
    assert (done.fingerprint, done.outcome) == ("f1", "succeeded")  # type: ignore[attr-defined]
