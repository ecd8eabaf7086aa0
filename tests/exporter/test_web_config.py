"""`--web.config.file` as node_exporter reads it: TLS from the named files, bcrypt basic auth."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.services import free_port, running
from tests.webconfig import basic, client_context, write_web_config


def _get(url: str, ctx: ssl.SSLContext, auth: str | None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _wait(url: str, ctx: ssl.SSLContext) -> None:
    end = time.monotonic() + 20
    while time.monotonic() < end:
        try:
            _get(url, ctx, None)
            return
        except (OSError, ssl.SSLError):
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered over TLS")


def test_tls_and_bcrypt_basic_auth_guard_every_endpoint(tmp: Path) -> None:
    (tmp / "data").mkdir()
    cfg = tmp / "taskmedic.yml"
    cfg.write_text(f"disks:\n  - path: {tmp / 'data'}\n")
    web = write_web_config(tmp)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    ctx = client_context(tmp)
    with running([sys.executable, "-m", "exporter", "--config", str(cfg), "--web.listen-address",
                  f"127.0.0.1:{port}", "--web.config.file", str(web), "--log.format", "logfmt"], tmp / "log"):
        _wait(url + "/healthz", ctx)
        for path in ("/metrics", "/healthz", "/"):
            assert _get(url + path, ctx, None)[0] == 401
            assert _get(url + path, ctx, basic(password="wrong"))[0] == 401
            assert _get(url + path, ctx, "Basic \u00e9")[0] == 401
        code, body = _get(url + "/metrics", ctx, basic())
        assert code == 200 and "taskmedic_disk_free_ratio" in body
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP is not served
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    first = (tmp / "log").read_text().splitlines()[0]
    assert first.startswith("ts=20") and " level=info " in first and "tls=True" in first


def test_a_bad_web_config_is_refused_with_file_and_key(tmp: Path) -> None:
    cfg = tmp / "taskmedic.yml"
    cfg.write_text(f"disks:\n  - path: {tmp}\n")
    web = tmp / "web.yml"
    web.write_text("basic_auth_users:\n  alice: plaintext-password\n")
    r = subprocess.run([sys.executable, "-m", "exporter", "--config", str(cfg), "--web.config.file", str(web)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "web.yml:2" in r.stderr and "basic_auth_users.alice" in r.stderr and "bcrypt" in r.stderr
    assert "plaintext-password" not in r.stderr


def test_version_names_the_revision_and_old_flag_spellings_still_work(tmp: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "exporter", "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "revision" in r.stdout
    cfg = tmp / "taskmedic.yml"
    cfg.write_text(f"disks:\n  - path: {tmp}\n")
    for flags in (["--log-format", "json", "--log-level", "debug"], ["--log.format", "json", "--log.level", "debug"]):
        r = subprocess.run([sys.executable, "-m", "exporter", *flags, "check", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
