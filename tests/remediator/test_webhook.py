"""POST /alerts as Alertmanager and strangers use it: auth, bad bodies, duplicates, fuzzing."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskmedic.config.loader import ConfigError
from tests.remediator.kit import (
    FAIL_STALE,
    TOKEN,
    Client,
    Site,
    StartApp,
    alert,
    count,
    payload,
    post,
    seed_cape,
    settled,
)


async def metric(client: Client, name: str) -> str:
    async with client.get("/metrics") as r:
        return "\n".join(line for line in (await r.text()).splitlines() if line.startswith(name))


async def test_unauthenticated_or_wrong_token_is_401_and_nothing_is_journaled(site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    client = await start(site.setup(FAIL_STALE), run_worker=False)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": TOKEN}, {"Authorization": f"Bearer {TOKEN}x"}):
        status, body = await post(client, payload(), headers)
        assert (status, body) == (401, {"error": "unauthorized"})
    assert site.journal_rows() == []
    assert 'taskmedic_webhook_requests_total{code="401"} 5.0' in await metric(client, "taskmedic_webhook_requests")


async def test_rotated_tokens_from_a_file_and_basic_auth_are_accepted(site: Site, start: StartApp) -> None:
    (site.tmp / "tokens").write_text("old-token\n\nnew-token\n")
    (site.tmp / "password").write_text("pa55word\n")
    setup = site.setup(FAIL_STALE, auth={"bearer_token_file": "tokens",
                                         "basic_auth": {"username": "am", "password_file": "password"}})
    client = await start(setup, run_worker=False)
    basic = base64.b64encode(b"am:pa55word").decode()
    wrong = base64.b64encode(b"am:guess").decode()
    assert (await post(client, payload(), {"Authorization": "Bearer old-token"}))[0] == 200
    assert (await post(client, payload(), {"Authorization": "Bearer new-token"}))[0] == 200
    assert (await post(client, payload(), {"Authorization": f"Basic {basic}"}))[0] == 200
    assert (await post(client, payload(), {"Authorization": f"Basic {wrong}"}))[0] == 401
    assert (await post(client, payload(), {"Authorization": "Basic !!notbase64"}))[0] == 401


def test_an_empty_basic_auth_password_is_refused_like_an_empty_token(site: Site) -> None:
    for password in ("", "   "):
        with pytest.raises(ConfigError, match="the basic_auth password cannot be empty"):
            site.setup(FAIL_STALE, auth={"basic_auth": {"username": "am", "password": password}})
    (site.tmp / "password").write_text("  \n\n")
    with pytest.raises(ConfigError, match="password file is empty"):
        site.setup(FAIL_STALE, auth={"basic_auth": {"username": "am", "password_file": "password"}})


async def test_with_auth_none_the_warning_says_the_audit_trail_is_open_too(
        site: Site, start: StartApp, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="taskmedic.remediator")
    client = await start(site.setup(FAIL_STALE, auth="none"), run_worker=False)
    async with client.get("/runs") as r:
        assert r.status == 200  # protect_runs has no credentials to ask for
    [warning] = [r.getMessage() for r in caplog.records if "auth: none" in r.getMessage()]
    assert "POST /alerts" in warning and "GET /runs" in warning and "are open too" in warning


async def test_malformed_bodies_get_a_precise_400_and_nothing_is_journaled(site: Site, start: StartApp) -> None:
    client = await start(site.setup(FAIL_STALE), run_worker=False)
    status, body = await post(client, b"{not json")
    assert (status, body["problems"]) == (400, ["(body): Invalid JSON: key must be a string at line 1 column 2"])
    status, body = await post(client, {"alerts": 7})
    assert status == 400
    assert {"version: Field required", "alerts: Input should be a valid array"} <= set(body["problems"])
    no_start = payload(alert())
    del no_start["alerts"][0]["startsAt"]
    status, body = await post(client, no_start)
    assert (status, body["problems"]) == (400, ["alerts[0].startsAt: Field required"])
    nul = payload(alert(older_than="1 hour\x00"))
    status, body = await post(client, nul)
    assert status == 400 and body["problems"] == ["alerts[0].labels.older_than: Value error, NUL characters are "
                                                  "not allowed"]
    status, body = await post(client, {**payload(), "version": "3"})
    assert status == 400 and body["problems"][0].startswith("version: Input should be '4'")
    assert site.journal_rows() == []


async def test_oversized_body_is_413(site: Site, start: StartApp) -> None:
    client = await start(site.setup(FAIL_STALE, max_body_bytes=4096), run_worker=False)
    big = payload(alert(note="x" * 5000))
    status, _ = await post(client, big)
    assert status == 413
    assert site.journal_rows() == []


async def test_100_concurrent_identical_deliveries_make_one_run(site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    client = await start(site.setup(FAIL_STALE))
    answers = await asyncio.gather(*(post(client, payload()) for _ in range(100)))
    assert {status for status, _ in answers} == {200}
    assert sum(body["journaled"] for _, body in answers) == 1
    rows = await settled(site)
    assert [(r["playbook"], r["outcome"]) for r in rows] == [("cape-fail-stale-pending", "succeeded")]
    assert count(site.cape, "status = 'failed_analysis'") == 5
    assert count(site.cape, "status = 'pending'") == 2


async def test_concurrent_posts_share_commits_and_each_learns_its_own_runs(site: Site, start: StartApp) -> None:
    client = await start(site.setup(FAIL_STALE), run_worker=False)
    # 60 POSTs at once: 40 distinct alerts, 20 repeating one of them, and one POST of two alerts
    bodies = [payload(alert(f"f{i}")) for i in range(40)] + [payload(alert("f7")) for _ in range(20)]
    bodies.append(payload(alert("pair-a"), alert("pair-b")))
    answers = await asyncio.gather(*(post(client, b) for b in bodies))
    assert {status for status, _ in answers} == {200}
    assert sum(body["journaled"] for _, body in answers) == 42
    assert sum(body["duplicates"] for _, body in answers) == 20
    assert answers[-1][1]["journaled"] == 2
    # whichever POST of f7 committed first journaled it; the other 20 saw a duplicate
    assert sum(body["journaled"] for _, body in answers[:60]) == 40
    assert len(site.journal_rows()) == 42


async def test_an_alert_matching_no_playbook_is_counted_not_journaled(site: Site, start: StartApp) -> None:
    client = await start(site.setup(FAIL_STALE), run_worker=False)
    other = alert("f9", alertname="DiskAlmostFull", reason="")
    status, body = await post(client, payload(other, alert("f1")))
    assert status == 200 and body == {"journaled": 1, "duplicates": 0, "unmatched": 1}
    assert site.journal_rows() == ["cape-fail-stale-pending|f1|"]
    assert "taskmedic_alerts_unmatched_total 1.0" in await metric(client, "taskmedic_alerts_unmatched")


async def test_resolved_alerts_do_not_run_a_firing_playbook(site: Site, start: StartApp) -> None:
    client = await start(site.setup(FAIL_STALE), run_worker=False)
    status, body = await post(client, payload(alert(status="resolved")))
    assert status == 200 and body["unmatched"] == 1
    assert site.journal_rows() == []


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                                              inner, max_size=4),
                        max_leaves=20)


def _almost_valid() -> st.SearchStrategy[dict[str, Any]]:
    """Valid payloads with one field replaced by something arbitrary."""
    keys = ["version", "status", "receiver", "alerts", "groupKey", "truncatedAlerts", "commonLabels"]
    alert_keys = ["status", "labels", "annotations", "startsAt", "endsAt", "fingerprint", "generatorURL"]

    def mutate(where: str, key: str, value: Any) -> dict[str, Any]:
        body = payload(alert(), alert("f2"))
        target = body if where == "top" else body["alerts"][0]
        target[key] = value
        return body

    return (st.builds(mutate, st.just("top"), st.sampled_from(keys), _json_values())
            | st.builds(mutate, st.just("alert"), st.sampled_from(alert_keys),
                        _json_values() | st.text() | st.datetimes().map(lambda d: d.isoformat() + "+14:00")))


@pytest.fixture
async def webhook_only(site: Site, start: StartApp) -> Client:
    """One app for every example hypothesis tries (fixtures are not re-created per example)."""
    return await start(site.setup(FAIL_STALE), run_worker=False)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200) | _json_values().map(lambda v: json.dumps(v).encode())
       | _almost_valid().map(lambda v: json.dumps(v).encode()))
async def test_fuzzed_bodies_never_cause_a_5xx(webhook_only: Client, body: bytes) -> None:
    status, answer = await post(webhook_only, body)
    assert status in (200, 400), (status, answer)
