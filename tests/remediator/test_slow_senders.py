"""A real `taskmedic-remediator` on a hostile network: half-sent heads and bodies from raw sockets."""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from tests.remediator.kit import AUTH, FAIL_STALE, Site, payload
from tests.services import free_port, running, wait_http
from tests.sockets import all_closed, get, half_sent

HALF_HEAD = b"POST /alerts HTTP/1.1\r\nHost: taskmedic\r\nContent-Type: application/json\r\n"


@contextmanager
def remediator(site: Site, **settings: object) -> Iterator[int]:
    port = free_port()
    config = site.write(FAIL_STALE, **settings)
    argv = [sys.executable, "-m", "remediator", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    with running(argv, site.tmp / "remediator.log"):
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield port


def post_alert(port: int) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/alerts", data=json.dumps(payload()).encode(),
                                     method="POST", headers={"Content-Type": "application/json", **AUTH})
    with urllib.request.urlopen(request, timeout=5) as r:
        return int(r.status)


def test_300_half_sent_requests_do_not_delay_a_real_alert_and_are_dropped_after_the_header_timeout(
        site: Site) -> None:
    with remediator(site, http={"header_timeout": "2s"}) as port, half_sent(port, 300, HALF_HEAD) as attackers:
        assert post_alert(port) == 200
        assert [row.split("|")[:2] for row in site.journal_rows()] == [["cape-fail-stale-pending", "f1"]]
        assert all_closed(attackers, within=6) == 300


def test_a_body_that_never_finishes_is_dropped_after_the_body_timeout(site: Site) -> None:
    head = HALF_HEAD + f"Authorization: {AUTH['Authorization']}\r\nContent-Length: 5000\r\n\r\n".encode()
    with remediator(site, http={"body_timeout": "2s"}) as port, half_sent(port, 50, head + b'{"version"') as slow:
        assert post_alert(port) == 200
        assert all_closed(slow, within=6) == 50
        assert 'taskmedic_webhook_requests_total{code="408"} 50.0' in get(port, "/metrics")[1]
