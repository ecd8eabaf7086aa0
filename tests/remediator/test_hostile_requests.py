"""What a stranger on the network can send or read: undecodable credentials, a journal connection
that breaks mid-protocol, forged log lines, health endpoints without credentials."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from taskmedic import logs
from tests.conftest import Database
from tests.remediator.kit import AUTH, FAIL_STALE, Client, Site, StartApp, alert, payload, post


async def raw_request(client: Client, head: bytes, body: bytes = b"") -> bytes:
    """The status line of a request sent byte for byte (no client library re-encodes the headers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    await writer.drain()
    status = await reader.readline()
    writer.close()
    return status.strip()


async def test_undecodable_authorization_headers_are_401_never_500(
        site: Site, start: StartApp, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    client = await start(site.setup(FAIL_STALE, auth={"bearer_token": "secret",
                                                      "basic_auth": {"username": "am", "password": "pw"}}), False)
    body = json.dumps(payload()).encode()
    for credentials in (b"Bearer \xff\xfe", "Basic é".encode(), "Basic é".encode("latin-1"), b"Basic \xff",
                        b"Bearer secret\xff", b"Basic " + base64.b64encode(b"am:\xff\xfe")):
        head = b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: " + credentials
        assert await raw_request(client, head + b"\r\n", body) == b"HTTP/1.1 401 Unauthorized", credentials
        runs = b"GET /runs HTTP/1.1\r\nHost: x\r\nAuthorization: " + credentials + b"\r\n"
        assert await raw_request(client, runs) == b"HTTP/1.1 401 Unauthorized", credentials
    assert [r.getMessage() for r in caplog.records] == []
    assert site.journal_rows() == []


# A reply that looks complete (parse done, no parameters, no data, ready) followed by two more
# "ready" messages nothing asked for: asyncpg aborts the connection mid-operation and raises
# InternalClientError, as seen when a journal server failed over behind a proxy.
NONSENSE = b"1\x00\x00\x00\x04" + b"t\x00\x00\x00\x06\x00\x00" + b"n\x00\x00\x00\x04" + b"Z\x00\x00\x00\x05I" * 3


class BreakingProxy:
    """A TCP proxy to the journal's PostgreSQL that, once `broken`, answers every query with a
    reply that breaks the protocol's state (a failing middlebox, a half-dead server)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.broken = False
        self.writers: list[asyncio.StreamWriter] = []

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(NONSENSE if self.broken and not upstream else data)
                await writer.drain()
        writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[int]:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            server.close()
            for writer in self.writers:
                writer.close()


async def test_a_journal_connection_broken_mid_protocol_is_503_not_500(
        site: Site, start: StartApp, caplog: pytest.LogCaptureFixture) -> None:
    dsn = urlsplit(site.journal.dsn)
    proxy = BreakingProxy(dsn.hostname or "127.0.0.1", dsn.port or 5432)
    async with proxy.running() as port:
        journal = dsn._replace(netloc=dsn.netloc.replace(f":{dsn.port}", f":{port}")).geturl()
        client = await start(site.setup(FAIL_STALE, journal=journal), run_worker=False)
        assert (await post(client, payload(alert("f1"))))[0] == 200
        # Several journal connections open and idle in the pool, as after any busy minute.
        assert {(await r.json())["runs"][0]["fingerprint"] for r in await asyncio.gather(
            *[client.get("/runs", headers=AUTH) for _ in range(6)])} == {"f1"}
        proxy.broken = True
        statuses = [(await post(client, payload(alert(f"f{i}"))))[0] for i in range(2, 6)]
        assert set(statuses) == {503}, statuses
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]


async def test_a_label_with_a_newline_cannot_forge_a_log_line(
        site: Site, start: StartApp, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.setup("text", "info")
    try:
        client = await start(site.setup(FAIL_STALE), run_worker=False)
        forged = "Nothing\n12:00:00 ERROR   forged: all replicas down\r\x1b[2J"
        assert (await post(client, payload(alert(alertname=forged))))[0] == 200
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = capsys.readouterr().err.splitlines()
    [unmatched] = [line for line in lines if "alert matches no playbook" in line]
    assert 'alertname="Nothing\\n12:00:00 ERROR   forged: all replicas down\\r\\x1b[2J"' in unmatched
    assert not [line for line in lines if line.startswith("12:00:00")]


async def test_health_and_readiness_say_only_status_without_credentials(
        site: Site, start: StartApp) -> None:
    client = await start(site.setup(FAIL_STALE), run_worker=False)
    for path, status in (("/healthz", "ok"), ("/readyz", "ready")):
        async with client.get(path) as r:
            assert (r.status, await r.json()) == (200, {"status": status})
    async with client.get("/healthz", headers=AUTH) as r:
        assert (await r.json())["playbooks"] == ["cape-fail-stale-pending"]
    down = Database(site.journal.server, "no_such_database")
    client = await start(site.setup(FAIL_STALE, journal=down.dsn), run_worker=False)
    async with client.get("/readyz") as r:
        assert (r.status, await r.json()) == (503, {"status": "journal unavailable"})
    async with client.get("/readyz", headers=AUTH) as r:
        assert "no_such_database" in (await r.json())["error"]
