"""Credentials are required: a config without `auth:` neither checks nor starts, and running open
takes an explicit `auth: none` that is warned about at every start. Real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

from tests.remediator.kit import FAIL_STALE, Site, payload
from tests.services import free_port, running, wait_http


def remediator(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "remediator", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_a_config_without_auth_fails_check_and_the_server_refuses_to_start(site: Site) -> None:
    path = site.write(FAIL_STALE, auth=None)
    done = remediator("check", "--config", str(path))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == (
        f"error: {path}:8: remediator.auth: credentials are required: set bearer_token, bearer_token_file or "
        "basic_auth; or write `auth: none` to accept alerts from anyone who can reach the port (not recommended)")
    port = free_port()
    served = remediator("--config", str(path), "--listen", f"127.0.0.1:{port}", timeout=30)
    assert (served.returncode, served.stderr) == (1, done.stderr)  # exits at once, nothing listened


def test_an_auth_block_without_credentials_is_refused_too(site: Site) -> None:
    for auth, problem in (({}, "credentials are required: set bearer_token"),
                          ({"protect_runs": False}, "credentials are required: set bearer_token"),
                          ("open", "expected a mapping of credentials or the word `none` (got 'open')"),
                          ({"unauthenticated": True, "bearer_token": "x"}, "`auth: none` cannot be combined")):
        done = remediator("check", "--config", str(site.write(FAIL_STALE, auth=auth)))
        assert done.returncode == 1, auth
        assert "remediator.auth: " + problem in done.stderr, done.stderr


def test_auth_none_checks_and_runs_open_with_a_warning_at_every_start(site: Site) -> None:
    path = site.write(FAIL_STALE, auth="none")
    assert remediator("check", "--config", str(path)).returncode == 0
    log = site.tmp / "open.log"
    for start in range(2):
        port = free_port()
        with running([sys.executable, "-m", "remediator", "--config", str(path), "--listen",
                      f"127.0.0.1:{port}"], log):
            wait_http(f"http://127.0.0.1:{port}/healthz")
            request = urllib.request.Request(f"http://127.0.0.1:{port}/alerts", method="POST",
                                             data=json.dumps(payload()).encode())
            with urllib.request.urlopen(request, timeout=10) as r:
                assert r.status == 200  # no Authorization header at all
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/runs", timeout=10) as r:
                assert r.status == 200
        [warning] = [line for line in log.read_text().splitlines() if "auth: none" in line]
        assert "POST /alerts can trigger playbooks" in warning and "GET /runs" in warning, (start, warning)
