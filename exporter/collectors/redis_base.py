"""What every Redis queue collector shares: its schedule, its client, and capped key discovery."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from exporter.collectors.base import SystemCollector
from taskmedic.config.model import QueueSource, System


@dataclass
class RedisQueueCollector(SystemCollector):
    @property
    def name(self) -> str:
        return f"queues:{self.system_name}"

    @property
    def source(self) -> QueueSource:
        assert self.system.queues is not None
        return self.system.queues

    @property
    def client(self) -> aioredis.Redis:
        assert self.system.redis is not None
        return self.connections.redis(self.system.redis)



async def scan_keys(client: aioredis.Redis, pattern: str, cap: int) -> list[bytes]:
    """Keys matching `pattern`, at most `cap` of them (SCAN never blocks the server)."""
    found: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        found.append(key)
        if len(found) >= cap:
            break
    return found


def systems_of_type(systems: dict[str, System], kind: str) -> list[tuple[str, System]]:
    return [(n, s) for n, s in systems.items() if s.queues is not None and s.queues.type == kind]
