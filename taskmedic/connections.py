"""One asyncpg pool per PostgreSQL DSN and one Redis client per URL, opened lazily.

Opening lazily means a process starts while a database is down and connects as soon as it is
back; a pool whose server restarted hands out fresh connections on the next acquire, because
asyncpg drops connections that failed. Statement timeouts are set per pool, server side.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from pydantic import SecretStr


@dataclass
class Connections:
    application_name: str
    statement_timeout: float = 10.0
    pools: dict[tuple[str, str | None, float], Any] = field(default_factory=dict)
    clients: dict[str, aioredis.Redis] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def pg(self, dsn: SecretStr, timezone: str | None = None, timeout: float | None = None) -> Any:
        """The pool for `dsn` (created on first use; creation is retried on the next call)."""
        timeout = timeout or self.statement_timeout
        key = (dsn.get_secret_value(), timezone, timeout)
        async with self._lock:
            pool = self.pools.get(key)
            if pool is None:
                settings = {"application_name": self.application_name,
                            "statement_timeout": str(int(timeout * 1000)),
                            "lock_timeout": str(int(timeout * 1000))}
                if timezone:
                    settings["timezone"] = timezone
                pool = await asyncpg.create_pool(key[0], min_size=0, max_size=4, timeout=timeout,
                                                 command_timeout=timeout + 1,
                                                 server_settings=settings)
                self.pools[key] = pool
            return pool

    def redis(self, url: SecretStr) -> aioredis.Redis:
        raw = url.get_secret_value()
        client = self.clients.get(raw)
        if client is None:
            client = aioredis.Redis.from_url(raw, socket_timeout=self.statement_timeout,
                                             socket_connect_timeout=self.statement_timeout,
                                             health_check_interval=30)
            self.clients[raw] = client
        return client

    async def close(self) -> None:
        for pool in self.pools.values():
            pool.terminate()
        for client in self.clients.values():
            await client.aclose()
        self.pools.clear()
        self.clients.clear()


def redis_now(time_reply: Any) -> float:
    """Redis' own clock from a TIME reply: ages are measured on the server's clock."""
    seconds, micros = time_reply
    return int(seconds) + int(micros) / 1e6


def redis_text(value: Any) -> str:
    """A Redis reply (bytes, or an int/str some commands give) as text; undecodable bytes replaced."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
