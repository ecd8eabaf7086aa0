"""Raw sockets as slow or hostile HTTP clients: half-sent requests, floods, and seeing them closed."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager


@contextmanager
def half_sent(port: int, n: int, data: bytes) -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        socks = []
        for _ in range(n):
            s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            s.sendall(data)
            socks.append(s)
        yield socks


def closed_by_server(s: socket.socket, within: float) -> bool:
    """True once the server has closed the connection (EOF or reset) within `within` seconds."""
    s.settimeout(within)
    try:
        while s.recv(4096):
            pass  # an answer (408, 503) before the close is fine
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def all_closed(socks: list[socket.socket], within: float) -> int:
    """How many of the sockets the server closed, waiting at most `within` seconds overall."""
    end = time.monotonic() + within
    return sum(closed_by_server(s, max(0.01, end - time.monotonic())) for s in socks)


def get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return int(r.status), r.read().decode()
