"""Stopping the robot at 3 a.m.: a pause, global or per playbook, stored in the journal, seen by
every replica and by the command line; alerts keep being journaled and end `suppressed`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

from tests.remediator.kit import AUTH, Client, Site, StartApp, alert, count, payload, post, seed_cape, settled

FAIL_OLD = """
name: {name}
match:
  alertname: {alertname}
steps:
  - name: fail old pending tasks
    sql:
      system: cape
      statement: >-
        update tasks set status = 'failed_analysis'
        where status = 'pending' and added_on < localtimestamp - interval '1 hour'
      max_rows: 100
"""
FIRST = FAIL_OLD.format(name="first", alertname="First")
SECOND = FAIL_OLD.format(name="second", alertname="Second")


async def call(client: Client, method: str, path: str, body: Any = None, auth: bool = True) -> tuple[int, Any]:
    async with client.request(method, path, json=body, headers=AUTH if auth else {}) as r:
        return r.status, await r.json(content_type=None)


async def cli(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line, in a thread: a blocking call here would freeze the app under test mid-
    transaction on the journal, and the command's own migration would wait on it."""
    argv = [sys.executable, "-m", "remediator", *args, "--config", str(site.tmp / "taskmedic.yml")]
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60)


async def test_a_global_pause_suppresses_runs_until_resumed_from_the_command_line(site: Site,
                                                                                  start: StartApp) -> None:
    seed_cape(site.cape)
    client = await start(site.setup(FIRST, SECOND))
    assert (await call(client, "POST", "/pause", {"reason": "db maintenance"}, auth=False))[0] == 401
    status, body = await call(client, "POST", "/pause", {"reason": "db maintenance"})
    assert status == 200 and body["scope"] == "*"
    assert "all playbooks" in (await cli(site, "status")).stdout

    await post(client, payload(alert("f1", alertname="First")))
    [run] = await settled(site)
    assert run["outcome"] == "suppressed"
    assert "paused: all playbooks" in run["error"] and "db maintenance" in run["error"]
    assert count(site.cape, "status = 'pending'") == 7, "a paused remediator changes nothing"
    async with client.get("/metrics") as r:
        assert 'taskmedic_remediation_paused_since_timestamp_seconds{scope="*"}' in await r.text()

    resumed = await cli(site, "resume")
    assert resumed.returncode == 0 and "resumed all playbooks" in resumed.stdout
    assert (await cli(site, "status")).stdout.strip() == "not paused"
    await post(client, payload(alert("f2", alertname="First")))
    runs = await settled(site, 2)
    assert runs[1]["outcome"] == "succeeded"
    assert count(site.cape, "status = 'pending'") == 2


async def test_a_playbook_pause_holds_back_only_that_playbook_and_may_expire(site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    client = await start(site.setup(FIRST, SECOND))
    paused = await cli(site, "pause", "--playbook", "first", "--reason", "investigating", "--for", "1h")
    assert paused.returncode == 0 and "playbook first" in paused.stdout and "until" in paused.stdout
    assert (await cli(site, "pause", "--playbook", "no-such-playbook")).returncode == 1
    await post(client, payload(alert("f1", alertname="First")))
    await post(client, payload(alert("f2", alertname="Second")))
    runs = {r["playbook"]: r for r in await settled(site, 2)}
    assert runs["first"]["outcome"] == "suppressed" and "investigating" in runs["first"]["error"]
    assert runs["second"]["outcome"] == "succeeded"

    assert (await call(client, "POST", "/pause", {"playbook": "second", "for": "0s"}))[0] == 200
    status, body = await call(client, "GET", "/pause")
    assert status == 200 and [p["scope"] for p in body["paused"]] == ["first"], "an expired pause is over"
    assert (await call(client, "POST", "/pause", {"playbook": "nope"}))[0] == 400
    assert (await call(client, "POST", "/pause", {"for": "soon"}))[0] == 400
    assert (await call(client, "POST", "/resume", {"playbook": "first"})) == (200, {"scope": "first",
                                                                                   "resumed": True})
