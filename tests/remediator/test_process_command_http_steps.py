"""The `process`, `command` and `http` steps with a real child process and a real local server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp import web

from taskmedic.config.loader import ConfigError
from tests.remediator.kit import Site, execute, trusting_labels


def book(step: str) -> str:
    return trusting_labels(f"name: t\nmatch: {{alertname: TaskmedicStuckTasks}}\nsteps:\n  - name: act\n    {step}\n")


@pytest.fixture
def engine_process(tmp: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in for a scanner engine: a real process with a recognisable command line."""
    script = tmp / "scan-engine.py"
    script.write_text("import time\nwhile True: time.sleep(1)\n")
    proc = subprocess.Popen([sys.executable, str(script), "--task", "42"])
    yield proc
    proc.kill()
    proc.wait()


async def test_a_zombie_engine_process_matching_the_pattern_is_terminated(
        site: Site, engine_process: subprocess.Popen[bytes]) -> None:
    setup = site.setup(book('process: {pid: "{{ labels.pid }}", match: "scan-engine\\\\.py --task", wait: 5s}'))
    report = await execute(setup, {"pid": str(engine_process.pid)})
    assert (report.outcome, report.steps[0].detail["exited"]) == ("succeeded", True)
    assert not psutil.pid_exists(engine_process.pid)


async def test_a_process_that_does_not_match_is_refused_and_left_alone(
        site: Site, engine_process: subprocess.Popen[bytes]) -> None:
    setup = site.setup(book('process: {pid: "{{ labels.pid }}", match: "^celery worker"}'))
    report = await execute(setup, {"pid": str(engine_process.pid)})
    assert report.outcome == "refused"
    assert engine_process.poll() is None
    for pid, outcome in (("1", "refused"), (str(os.getpid()), "refused"), ("12; kill -9 1", "failed")):
        assert (await execute(setup, {"pid": pid})).outcome == outcome, pid


async def test_a_process_already_gone_is_nothing_to_do(site: Site) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    report = await execute(site.setup(book('process: {pid: "{{ labels.pid }}", match: "true"}')),
                           {"pid": str(gone.pid)})
    assert (report.outcome, report.steps[0].rows, report.steps[0].detail["gone"]) == ("succeeded", 0, True)


def test_find_gone_takes_the_rows_of_an_earlier_step_itself(site: Site) -> None:
    query = "name: rows\n    sql: {system: cape, query: \"select 1 as pid\"}\n  - "
    for step, problem in (
            ('process: {action: find_gone, pid: "1", match: x}', "action: find_gone needs `rows_from`"),
            ('process: {pid: "1", match: x, rows_from: rows}', "and only find_gone takes it"),
            ('process: {action: find_gone, rows_from: later, pid: "{{ item.pid }}", match: x}',
             "rows_from must name an earlier step"),
            ('for_each: rows\n    process: {action: find_gone, rows_from: rows, pid: "{{ item.pid }}", match: x}',
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


async def test_path_traversal_and_crlf_in_a_label_stay_inside_one_url_segment(
        site: Site, cape_api: tuple[str, list[dict[str, Any]]]) -> None:
    base, seen = cape_api
    setup = site.setup(book(f'http: {{method: POST, url: "{base}/apiv2/tasks/delete/{{{{ labels.task_id }}}}/pending/",'
                            ' query: {reason: "{{ labels.reason }}"}, body: {note: "{{ labels.reason }}"}}'))
    for task_id in ("../../admin/users", "..", "1\r\nX-Injected: yes", "1?all=true#x"):
        await execute(setup, {"task_id": task_id, "reason": "a&b=c\r\nX-Evil: 1"})
    paths = [s["path"] for s in seen]
    assert paths == ["/apiv2/tasks/delete/..%2F..%2Fadmin%2Fusers/pending/?reason=a%26b%3Dc%0D%0AX-Evil:+1",
                     "/apiv2/tasks/delete/%2E%2E/pending/?reason=a%26b%3Dc%0D%0AX-Evil:+1",
                     "/apiv2/tasks/delete/1%0D%0AX-Injected%3A%20yes/pending/?reason=a%26b%3Dc%0D%0AX-Evil:+1",
                     "/apiv2/tasks/delete/1%3Fall%3Dtrue%23x/pending/?reason=a%26b%3Dc%0D%0AX-Evil:+1"]
    assert all("X-Injected" not in s["headers"] and "X-Evil" not in s["headers"] for s in seen)
    assert seen[0]["body"] == '{"note": "a&b=c\\r\\nX-Evil: 1"}'


async def test_an_unexpected_status_fails_the_run(site: Site, cape_api: tuple[str, list[dict[str, Any]]]) -> None:
    base, _seen = cape_api
    report = await execute(site.setup(book(f'http: {{method: DELETE, url: "{base}/missing"}}')))
    assert report.outcome == "failed"
    assert report.error == f"step 'act': DELETE {base}/missing answered 404: {{\"error\": true}}"


def test_the_host_of_a_url_cannot_come_from_an_alert(site: Site) -> None:
    with pytest.raises(ConfigError, match="the scheme and host cannot be templated"):
        site.setup(book('http: {url: "http://{{ labels.host }}/x"}'))
