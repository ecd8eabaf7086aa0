"""The rounds of one engine's kill → detect bench (bench/engine_*.py), all on one throwaway Redis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from deploy.local.servers import RedisServer

Run = TypeVar("Run")


def rounds_on_redis(tmp: Path, server_dir: str, one_round: Callable[[Path, RedisServer, int], Run],
                    rounds: int) -> list[Run]:
    """`one_round(tmp, server, i)` for each round i, on a Redis server in `tmp / server_dir`,
    stopped at the end."""
    server = RedisServer(tmp / server_dir)
    server.start()
    try:
        return [one_round(tmp, server, i) for i in range(rounds)]
    finally:
        server.stop()
