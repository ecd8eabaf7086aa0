"""Hostile alert labels through the whole path (webhook → journal → every step type): SQL, shell
metacharacters, ../ paths, CR/LF and glob characters have no effect beyond a failed or refused run."""

from __future__ import annotations

from typing import Any

import redis
from aiohttp import web

from tests.remediator.kit import Site, StartApp, alert, count, payload, post, seed_cape, settled, trusting_labels

HOSTILE = {
    "older_than": "1 hour'; drop table tasks; --",
    "target": "x' or '1'='1",
    "path": "../../../precious.txt",
    "cmd": "; touch {marker} #$(touch {marker}) `touch {marker}`",
    "task_id": "../..\r\nX-Injected: 1*",
}


def playbooks(site: Site, api: str) -> list[str]:
    head = "match: {alertname: Hostile}\nsteps:\n  - name: act\n"
    return [trusting_labels(book) for book in (
        "name: sql-interval\n" + head + "    sql: {system: cape, statement: \"update tasks set status = "
        "'failed_analysis' where status = 'pending' and added_on < localtimestamp - $1::interval\", "
        "params: ['{{ labels.older_than }}'], max_rows_after_write: true}\n",
        "name: sql-text\n" + head + "    sql: {system: cape, statement: \"delete from tasks where target = $1\", "
        "params: ['{{ labels.target }}'], max_rows_after_write: true}\n",
        f"name: files\n{head}    files: {{root: {site.tmp / 'storage'}, path: '{{{{ labels.path }}}}'}}\n",
        "name: command\n" + head + "    command: {argv: [echo, '{{ labels.cmd }}']}\n",
        f"name: http\n{head}    http: {{url: '{api}/apiv2/tasks/delete/{{{{ labels.task_id }}}}/pending/'}}\n",
        "name: redis\n" + head
        + "    redis: {system: jobs, delete: {pattern: 'celery-task-meta-{{ labels.task_id }}'}}\n",
    )]


async def test_hostile_labels_change_nothing_beyond_a_failed_or_refused_run(
        site: Site, start: StartApp, aiohttp_server: Any) -> None:
    seed_cape(site.cape)
    (site.tmp / "storage").mkdir()
    (site.tmp / "precious.txt").write_text("keep me")
    marker = site.tmp / "pwned"
    keys = redis.Redis.from_url(site.redis_url)
    keys.mset({"celery-task-meta-1": "{}", "celery-task-meta-2": "{}"})
    seen: list[str] = []

    async def api(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({}, status=404)

    app = web.Application()
    app.router.add_route("*", r"/{tail:(?s:.*)}", api)
    server = await aiohttp_server(app)
    client = await start(site.setup(*playbooks(site, f"http://127.0.0.1:{server.port}")))
    labels = {**HOSTILE, "cmd": HOSTILE["cmd"].format(marker=marker)}
    status, _ = await post(client, payload(alert("evil", alertname="Hostile", **labels)))
    assert status == 200
    runs = {r["playbook"]: r for r in await settled(site, 6)}
    assert {name: r["outcome"] for name, r in runs.items()} == {
        "sql-interval": "failed", "sql-text": "skipped", "files": "refused", "command": "succeeded",
        "http": "refused", "redis": "skipped"}  # skipped: the hostile values matched nothing to change
    assert runs["sql-text"]["steps"][0]["rows"] == 0
    assert runs["redis"]["steps"][0]["rows"] == 0
    assert runs["command"]["steps"][0]["detail"]["output"] == labels["cmd"] + "\n"
    assert count(site.cape, "true") == 7 and count(site.cape, "status = 'pending'") == 7
    assert (site.tmp / "precious.txt").read_text() == "keep me"
    assert not marker.exists()
    assert seen == []  # a URL value with '/' or CR/LF is refused, not sent escaped
    assert sorted(keys.keys("celery-task-meta-*")) == [b"celery-task-meta-1", b"celery-task-meta-2"]
