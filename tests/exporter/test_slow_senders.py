"""A real `taskmedic-exporter` on a hostile network: half-sent requests, a connection flood, no file
descriptors left (RLIMIT_NOFILE lowered in the child)."""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tests.services import free_port, running, wait_http
from tests.sockets import all_closed, get, half_sent


def exporter_config(tmp: Path, http: dict[str, object] | None = None) -> Path:
    path = tmp / "exporter.yml"
    path.write_text(f"disks:\n  - path: {tmp}\n" + (f"exporter: {json.dumps({'http': http})}\n" if http else ""))
    return path


@contextmanager
def exporter(tmp: Path, config: Path, nofile: int | None = None) -> Iterator[tuple[int, Path]]:
    port = free_port()
    log = tmp / f"exporter-{port}.log"
    argv = [sys.executable, "-m", "exporter", "--config", str(config), "--listen", f"127.0.0.1:{port}"]

    def limit_files() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with running(argv, log, preexec_fn=limit_files):
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield port, log


def test_the_exporter_drops_half_sent_requests_and_keeps_serving_metrics(tmp: Path) -> None:
    config = exporter_config(tmp, {"header_timeout": "2s"})
    with exporter(tmp, config) as (port, _), half_sent(port, 300, b"GET /metrics HTTP/1.1\r\nHost: x\r\n") as socks:
        status, text = get(port, "/metrics")
        assert status == 200 and "taskmedic_disk_free_ratio" in text
        assert all_closed(socks, within=6) == 300


def test_connections_over_the_cap_get_a_503_at_once_and_the_process_serves_again_after(tmp: Path) -> None:
    config = exporter_config(tmp, {"max_connections": 20, "header_timeout": "60s"})
    with exporter(tmp, config) as (port, log):
        with half_sent(port, 20, b"GET /metrics HTTP/1.1\r\n") as held, half_sent(port, 30, b"") as excess:
            answers = []
            for s in excess:
                s.settimeout(2)
                with suppress(ConnectionResetError):
                    answers.append(s.recv(100))
            assert answers.count(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                                 b"Content-Length: 0\r\n\r\n") >= 25  # a reset may beat the answer
            assert all_closed(excess, within=2) == 30
            assert all_closed(held, within=0.5) == 0
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert get(port, "/metrics")[0] == 200
    refusals = [line for line in log.read_text().splitlines() if "too many open connections" in line]
    assert len(refusals) == 1 and "occurrences=1" in refusals[0]


def test_running_out_of_file_descriptors_logs_a_counted_line_not_one_per_retry(tmp: Path) -> None:
    with exporter(tmp, exporter_config(tmp), nofile=64) as (port, log):
        with half_sent(port, 120, b"") as _flood:
            time.sleep(6)
            lines = log.read_text().splitlines()
        accept_lines = [line for line in lines if "out of system resource" in line or "cannot accept" in line]
        assert len(accept_lines) == 1, accept_lines
        assert "cannot accept connections: out of file descriptors" in accept_lines[0]
        [warning] = [line for line in lines if "max_connections is above what the open-file limit" in line]
        assert "max_connections=512 open_files=64" in warning
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=5)  # serves again once they are gone
