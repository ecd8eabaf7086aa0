"""The remediator behind `--web.config.file`: TLS, bcrypt basic auth on every endpoint, and
Alertmanager's bearer token still accepted on the webhook."""

from __future__ import annotations

import json
import ssl
import sys
import time
import urllib.error
import urllib.request

from tests.remediator.kit import TOKEN, Site, alert, payload
from tests.services import free_port, running
from tests.webconfig import basic, client_context, write_web_config

PROBE = """
name: probe
match:
  alertname: Probe
steps:
  - name: look
    sql:
      system: cape
      query: "select 1"
"""


def _call(url: str, ctx: ssl.SSLContext, auth: str | None, body: bytes | None = None) -> int:
    headers = {"Content-Type": "application/json"} | ({"Authorization": auth} if auth else {})
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_web_config_guards_every_endpoint_and_keeps_the_webhook_token(site: Site) -> None:
    config = site.write(PROBE)
    web = write_web_config(site.tmp)
    ctx = client_context(site.tmp)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    body = json.dumps(payload(alert(alertname="Probe"))).encode()
    with running([sys.executable, "-m", "remediator", "--config", str(config), "--web.listen-address",
                  f"127.0.0.1:{port}", "--web.config.file", str(web)], site.tmp / "remediator.log"):
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                _call(url + "/healthz", ctx, None)
                break
            except (OSError, ssl.SSLError):
                time.sleep(0.2)
        for path in ("/metrics", "/runs", "/healthz"):
            assert _call(url + path, ctx, None) == 401
            assert _call(url + path, ctx, basic()) == 200
        assert _call(url + "/alerts", ctx, None, body) == 401
        assert _call(url + "/alerts", ctx, f"Bearer {TOKEN}", body) == 200  # Alertmanager's token
        assert _call(url + "/alerts", ctx, basic(), body) == 200  # a web-config user
        assert _call(url + "/alerts", ctx, basic(password="nope"), body) == 401
