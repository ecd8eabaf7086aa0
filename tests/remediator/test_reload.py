"""The remediator reloads its config, playbooks and credentials on SIGHUP and on an authenticated
POST /-/reload; a broken new config keeps the running one and says so in a metric."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from tests.remediator.kit import Site, alert, payload
from tests.services import free_port, running, wait_http

PROBE = """
name: {name}
match:
  alertname: {alertname}
steps:
  - name: look
    sql:
      system: cape
      query: "select 1"
"""


def _request(url: str, token: str | None = None, body: bytes | None = None) -> int:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    req = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        return str(r.read().decode())


def _until(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.2)
    return check()


def test_sighup_swaps_credentials_and_playbooks_and_keeps_them_when_the_new_file_is_broken(site: Site) -> None:
    config = site.write(PROBE.format(name="probe-a", alertname="A"), auth={"bearer_token": "old-token"})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    body = json.dumps(payload(alert(alertname="B"))).encode()
    with running([sys.executable, "-m", "remediator", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
                 site.tmp / "remediator.log") as proc:
        wait_http(url + "/healthz")
        assert _request(url + "/alerts", "old-token", body) == 200
        assert 'playbook="probe-b"' not in _metrics(url)

        site.write(PROBE.format(name="probe-b", alertname="B"), auth={"bearer_token": "new-token"})
        os.kill(proc.pid, signal.SIGHUP)
        assert _until(lambda: _request(url + "/alerts", "new-token", body) == 200)
        assert _request(url + "/alerts", "old-token", body) == 401
        text = _metrics(url)
        assert 'taskmedic_remediation_runs_total{outcome="succeeded",playbook="probe-b"}' in text
        assert "taskmedic_config_last_reload_successful 1.0" in text
        assert "_created" not in text, "no *_created series on the remediator's counters"
        assert "taskmedic_build_info{" in text and "process_resident_memory_bytes" in text

        (site.tmp / "playbooks" / "p0.yml").write_text("name: broken\nsteps: 7\n")
        os.kill(proc.pid, signal.SIGHUP)
        assert _until(lambda: "taskmedic_config_last_reload_successful 0.0" in _metrics(url))
        assert proc.poll() is None
        assert _request(url + "/alerts", "new-token", body) == 200, "the running config stays in place"

        assert _request(url + "/-/reload", None, b"") == 401
        assert _request(url + "/-/reload", "new-token", b"") == 500
        site.write(PROBE.format(name="probe-b", alertname="B"), auth={"bearer_token": "new-token"})
        assert _request(url + "/-/reload", "new-token", b"") == 200
        assert "taskmedic_config_last_reload_successful 1.0" in _metrics(url)
    log = (site.tmp / "remediator.log").read_text()
    assert "reload failed" in log and "p0.yml" in log
