"""The `process`, `command` and `http` steps with a real child process and a real local server."""

from __future__ import annotations

import os
import posixpath
import re
import subprocess
import sys
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web

from taskmedic.config.loader import ConfigError
from tests.engines import engine_program, reaped, start_engine, start_look_alikes
from tests.remediator.kit import Site, execute


def book(step: str) -> str:
    return f"name: t\nmatch: {{alertname: TaskmedicStuckTasks}}\nsteps:\n  - name: act\n    {step}\n"


def engine_book(task_pid: int, task_started: str = "now()", **process: str) -> str:
    """A playbook signalling the process a task row records (here a query of literals)."""
    spec = {"pid": "{{ item.pid }}", "started_at": "{{ item.started_at }}", "engine": "scan-engine", "wait": "5s",
            **process}
    return ("name: t\nmatch: {alertname: TaskmedicStuckTasks}\nsteps:\n"
            f"  - name: task\n    sql: {{system: cape, query: "
            f"\"select {task_pid} as pid, {task_started} as started_at\"}}\n"
            "  - name: act\n    for_each: task\n    process: "
            + "{" + ", ".join(f'{k}: "{v}"' for k, v in spec.items()) + "}\n")


async def test_the_engine_of_a_recorded_task_is_terminated(site: Site) -> None:
    engine = start_engine(engine_program(site.tmp))
    with reaped(engine):
        report = await execute(site.setup(engine_book(engine.pid, engine=str(engine_program(site.tmp)))))
        assert (report.outcome, report.steps[1].detail["each"][0]["exited"]) == ("succeeded", True)
        assert engine.poll() is not None


async def test_look_alikes_and_a_reused_pid_are_refused_and_left_alone(site: Site) -> None:
    look_alikes = start_look_alikes()
    engine = start_engine(engine_program(site.tmp))
    with reaped(engine, *look_alikes):
        for proc in look_alikes:
            report = await execute(site.setup(engine_book(proc.pid)))
            assert report.outcome == "refused"
            assert f"pid {proc.pid} is not the engine: its exe is " in (report.error or "")
        # the real engine's PID, on a task that started an hour before that process existed
        reused = await execute(site.setup(engine_book(engine.pid, "now() - interval '1 hour'")))
        assert reused.outcome == "refused"
        assert re.fullmatch(rf"step 'act': pid {engine.pid} is not the engine: created 3[56][0-9]{{2}}s after its "
                            "task started: a reused PID; not signalled", reused.error or ""), reused.error
        assert all(p.poll() is None for p in (engine, *look_alikes))  # nothing got a signal
    for pid, outcome in ((1, "refused"), (os.getpid(), "refused")):
        assert (await execute(site.setup(engine_book(pid)))).outcome == outcome, pid


async def test_a_process_already_gone_is_nothing_to_do(site: Site) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    report = await execute(site.setup(engine_book(gone.pid)))
    assert (report.outcome, report.steps[1].rows, report.steps[1].detail["each"][0]["gone"]) == ("succeeded", 0, True)


def test_a_pid_or_task_start_from_the_alert_is_refused_when_the_playbook_loads(site: Site) -> None:
    for key, template in (("pid", "{{ labels.pid }}"), ("pid", "{{ alert.fingerprint }}"),
                          ("started_at", "{{ annotations.started }}")):
        with pytest.raises(ConfigError, match=rf"p0.yml:8: steps\[1\]\.process\.{key}: comes from the alert"):
            site.setup(engine_book(1, **{key: template}))
    with pytest.raises(ConfigError, match=r"`match` .* is gone: set `engine`"):
        site.setup(book('process: {pid: "1", started_at: "0", match: "scan-engine"}'))


def test_find_gone_takes_the_rows_of_an_earlier_step_itself(site: Site) -> None:
    query = "name: rows\n    sql: {system: cape, query: \"select 1 as pid\"}\n  - "
    same = 'started_at: "{{ item.t }}", engine: x'
    for step, problem in (
            (f'process: {{action: find_gone, pid: "1", {same}}}', "action: find_gone needs `rows_from`"),
            (f'process: {{pid: "1", {same}, rows_from: rows}}', "and only find_gone takes it"),
            (f'process: {{action: find_gone, rows_from: later, pid: "{{{{ item.pid }}}}", {same}}}',
             "rows_from must name an earlier step"),
            (f'for_each: rows\n    process: {{action: find_gone, rows_from: rows, pid: "{{{{ item.pid }}}}", {same}}}',
             "drop for_each")):
        with pytest.raises(ConfigError, match=re.escape(problem)):
            site.setup(book(step).replace("  - name: act\n", "  - " + query + "name: act\n"))


async def test_shell_metacharacters_in_a_label_stay_one_literal_argument(site: Site) -> None:
    marker = site.tmp / "pwned"
    label = f"x; touch {marker}; $(touch {marker}) `touch {marker}` | touch {marker}"
    setup = site.setup(book(f'command: {{argv: [{sys.executable}, -c, "import sys; print(sys.argv[1:])", '
                            '"{{ labels.job }}"]}'))
    report = await execute(setup, {"job": label})
    assert report.outcome == "succeeded"
    assert report.steps[0].detail["output"].strip() == repr([label])
    assert not marker.exists()


async def test_a_label_that_would_be_an_option_of_the_program_is_refused(site: Site) -> None:
    marker = site.tmp / "written"
    script = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(repr(sys.argv[2:]))"
    head = f'command: {{argv: [{sys.executable}, -c, "{script}", "{marker}", '
    plain = site.setup(book(head + '"{{ labels.job }}"]}'))
    for job in ("--config=/tmp/evil.yml", "-rf"):
        for dry_run in (True, False):
            report = await execute(plain, {"job": job}, dry_run=dry_run)
            assert report.outcome == "refused", (job, dry_run)
            assert "starts with '-'" in (report.error or "") and job in (report.error or "")
    assert not marker.exists()  # never started
    # The operator's own option, a literal `--` before the value, or an explicit opt-in pass it.
    for step, expected in (
            (head + '"--job={{ labels.job }}"]}', ["--job=-rf"]),
            (head + '"--", "{{ labels.job }}"]}', ["--", "-rf"]),
            (head + '"{{ labels.job }}"], allow_option_values: true}', ["-rf"])):
        report = await execute(site.setup(book(step)), {"job": "-rf"})
        assert report.outcome == "succeeded", (step, report.error)
        assert marker.read_text() == repr(expected)


async def test_a_command_that_hangs_is_killed_at_its_timeout(site: Site) -> None:
    setup = site.setup(book("command: {argv: [sleep, '30'], timeout: 0.5s}"))
    report = await execute(setup)
    assert report.outcome == "failed"
    assert report.error == "step 'act': sleep did not finish within 0.5s; killed"


async def test_the_command_sees_only_allowed_environment(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKMEDIC_SECRET", "hunter2")
    setup = site.setup(book("command: {argv: [env], set_env: {JOB_SERVICE: harbor}}"))
    report = await execute(setup)
    lines = sorted(report.steps[0].detail["output"].splitlines())
    assert [line.split("=")[0] for line in lines] == ["JOB_SERVICE", "PATH"]


async def test_a_failing_command_fails_the_run_and_a_dry_run_does_not_start_it(site: Site) -> None:
    setup = site.setup(book("command: {argv: [sh, -c, 'echo broken; exit 3']}"))
    report = await execute(setup)
    assert (report.outcome, report.error) == ("failed", "step 'act': sh exited with 3: broken\n")
    preview = await execute(setup, dry_run=True)
    assert (preview.outcome, preview.steps[0].detail["ran"]) == ("dry_run", False)


def test_the_program_itself_cannot_come_from_an_alert(site: Site) -> None:
    with pytest.raises(ConfigError, match=r"p0.yml:5: steps\[0\]\.command\.argv: the program \(argv\[0\]\) "):
        site.setup(book('command: {argv: ["{{ labels.program }}"]}'))


@pytest.fixture
async def cape_api(aiohttp_server: Any) -> tuple[str, list[dict[str, Any]]]:
    """A stand-in for CAPE's REST API that records every request it gets."""
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append({"path": request.raw_path, "headers": dict(request.headers), "body": await request.text()})
        status = 404 if "missing" in request.raw_path else 200
        return web.json_response({"error": status != 200}, status=status)

    app = web.Application()
    app.router.add_route("*", r"/{tail:(?s:.*)}", handler)  # a decoded CR/LF must still reach the handler
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}", seen


async def test_cape_pending_task_is_deleted_through_its_api_with_a_secret_header(
        site: Site, cape_api: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch) -> None:
    base, seen = cape_api
    monkeypatch.setenv("CAPE_API_TOKEN", "s3cret")
    setup = site.setup(book(f'http: {{method: GET, url: "{base}/apiv2/tasks/delete/{{{{ labels.task_id }}}}/pending/",'
                            ' headers: {Authorization: "Token ${CAPE_API_TOKEN}"}}'))
    report = await execute(setup, {"task_id": "42"})
    assert (report.outcome, report.steps[0].detail["status"]) == ("succeeded", 200)
    assert seen[0]["path"] == "/apiv2/tasks/delete/42/pending/"
    assert seen[0]["headers"]["Authorization"] == "Token s3cret"
    assert "s3cret" not in str(report.steps[0].detail)


async def test_a_label_that_would_leave_its_url_segment_is_refused_and_nothing_is_sent(
        site: Site, cape_api: tuple[str, list[dict[str, Any]]]) -> None:
    base, seen = cape_api
    setup = site.setup(book(f'http: {{method: POST, url: "{base}/apiv2/tasks/delete/{{{{ labels.task_id }}}}/pending/",'
                            ' query: {reason: "{{ labels.reason }}"}, body: {note: "{{ labels.reason }}"}}'))
    for task_id in ("../../admin/users", "..", ".", "", "1\r\nX-Injected: yes", "..\\admin", "%2e%2e", "1\x7f"):
        for dry_run in (False, True):
            report = await execute(setup, {"task_id": task_id, "reason": "x"}, dry_run=dry_run)
            assert report.outcome == "refused", task_id
            assert (report.error or "").startswith(f"step 'act': URL value {task_id!r} "), report.error
    assert seen == []
    # the rest of a value stays data inside its segment; query and body values are encoded as such
    await execute(setup, {"task_id": "1?all=true#x", "reason": "a&b=c\r\nX-Evil: 1"})
    assert [s["path"] for s in seen] == \
        ["/apiv2/tasks/delete/1%3Fall%3Dtrue%23x/pending/?reason=a%26b%3Dc%0D%0AX-Evil:+1"]
    assert "X-Evil" not in seen[0]["headers"]
    assert seen[0]["body"] == '{"note": "a&b=c\\r\\nX-Evil: 1"}'


async def test_a_traversal_label_never_reaches_the_admin_page_of_a_server_that_decodes_slashes(
        site: Site, aiohttp_server: Any) -> None:
    """A server (or proxy) that decodes %2F and normalises the path before routing would turn
    /api/..%2F..%2Fadmin into /admin; the label must be refused, not escaped."""
    requested: list[str] = []

    async def route(request: web.Request) -> web.Response:
        path = posixpath.normpath(unquote(request.raw_path.split("?")[0]))
        requested.append(path)
        if path == "/admin":
            return web.json_response({"users": ["root"]})
        return web.json_response({"deleted": path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", route)
    server = await aiohttp_server(app)
    url = f"http://127.0.0.1:{server.port}/api/tasks/{{{{ labels.task }}}}"
    setup = site.setup(book(f'http: {{method: DELETE, url: "{url}", '
                            'headers: {Authorization: "Token operator-secret"}}'))
    report = await execute(setup, {"task": "../../admin"})
    assert (report.outcome, requested) == ("refused", [])
    assert (await execute(setup, {"task": "42"})).outcome == "succeeded"
    assert requested == ["/api/tasks/42"]


async def test_an_unexpected_status_fails_the_run(site: Site, cape_api: tuple[str, list[dict[str, Any]]]) -> None:
    base, _seen = cape_api
    report = await execute(site.setup(book(f'http: {{method: DELETE, url: "{base}/missing"}}')))
    assert report.outcome == "failed"
    assert report.error == f"step 'act': DELETE {base}/missing answered 404: {{\"error\": true}}"


def test_the_host_of_a_url_cannot_come_from_an_alert(site: Site) -> None:
    with pytest.raises(ConfigError, match="the scheme and host cannot be templated"):
        site.setup(book('http: {url: "http://{{ labels.host }}/x"}'))
