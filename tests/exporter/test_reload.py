"""The exporter reloads its config on SIGHUP (and POST /-/reload with --web.enable-lifecycle) the
way Prometheus does: a bad new file keeps the running config and says so in a metric."""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.services import free_port, running, wait_http


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def _post(url: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def _until(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.2)
    return check()


def _config(*paths: Path) -> str:
    return "disks:\n" + "".join(f"  - path: {p}\n    interval: 1s\n" for p in paths)


def test_sighup_reloads_config_and_a_broken_file_keeps_the_running_one(tmp: Path) -> None:
    first, second = tmp / "a", tmp / "b"
    first.mkdir()
    second.mkdir()
    cfg = tmp / "taskmedic.yml"
    cfg.write_text(_config(first))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "exporter", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                 tmp / "exporter.log") as proc:
        wait_http(url + "/healthz")
        assert _until(lambda: f'taskmedic_disk_free_ratio{{path="{first}"}}' in _get(url + "/metrics"))
        cfg.write_text(_config(first, second))
        os.kill(proc.pid, signal.SIGHUP)
        assert _until(lambda: f'taskmedic_disk_free_ratio{{path="{second}"}}' in _get(url + "/metrics"))
        assert "taskmedic_config_last_reload_successful 1.0" in _get(url + "/metrics")

        cfg.write_text("disks:\n  - path: [not, a, path]\n")
        os.kill(proc.pid, signal.SIGHUP)
        assert _until(lambda: "taskmedic_config_last_reload_successful 0.0" in _get(url + "/metrics"))
        assert proc.poll() is None, "a bad config must not stop the exporter"
        body = _get(url + "/metrics")
        assert f'taskmedic_disk_free_ratio{{path="{second}"}}' in body, "the running config stays in place"
        assert "/-/reload" not in body
        assert _post(url + "/-/reload") in (404, 405), "POST /-/reload needs --web.enable-lifecycle"

        cfg.write_text(_config(second))
        os.kill(proc.pid, signal.SIGHUP)
        assert _until(lambda: "taskmedic_config_last_reload_successful 1.0" in _get(url + "/metrics"))
        assert _until(lambda: f'path="{first}"' not in _get(url + "/metrics"))
    log = (tmp / "exporter.log").read_text()
    assert "reload failed" in log and "taskmedic.yml" in log


def test_post_reload_with_lifecycle_answers_like_prometheus(tmp: Path) -> None:
    (tmp / "a").mkdir()
    cfg = tmp / "taskmedic.yml"
    cfg.write_text(_config(tmp / "a"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "exporter", "--config", str(cfg), "--listen", f"127.0.0.1:{port}",
                  "--web.enable-lifecycle"], tmp / "exporter.log"):
        wait_http(url + "/healthz")
        assert _post(url + "/-/reload") == 200
        cfg.write_text("disks: {unknown_key: 1}\n")
        assert _post(url + "/-/reload") == 500
        assert "taskmedic_config_last_reload_successful 0.0" in _get(url + "/metrics")


def test_self_metrics_build_info_process_and_joinable_collector_labels(tmp: Path) -> None:
    ok, gone = tmp / "ok", tmp / "gone"
    ok.mkdir()
    cfg = tmp / "taskmedic.yml"
    cfg.write_text(_config(ok, gone))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "exporter", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                 tmp / "exporter.log"):
        wait_http(url + "/healthz")
        # the missing path fails every run: its error counter climbs while `up` stays 0
        assert _until(lambda: f'taskmedic_collector_errors_total{{collector="disk:{gone}",path="{gone}"}} 3.0'
                      in _get(url + "/metrics"))
        body = _get(url + "/metrics")
        assert f'taskmedic_collector_up{{collector="disk:{ok}",path="{ok}"}} 1.0' in body
        assert f'taskmedic_collector_up{{collector="disk:{gone}",path="{gone}"}} 0.0' in body
        assert "taskmedic_build_info{" in body and 'revision="' in body
        assert "process_resident_memory_bytes" in body and "python_info{" in body
        om = urllib.request.urlopen(urllib.request.Request(
            url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}), timeout=5)
        text = om.read().decode()
        assert text.endswith("# EOF\n") and text.count("# EOF") == 1
        assert "taskmedic_build_info" in text and "taskmedic_disk_free_ratio" in text
