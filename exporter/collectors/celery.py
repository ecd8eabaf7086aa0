"""CeleryQueueCollector: kombu's Redis transport: queue lists with their priority sub-queues,
and messages in flight (`unacked` hash, delivery times in `unacked_index`)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from exporter.collectors.redis_base import RedisQueueCollector, systems_of_type
from exporter.config import ExporterConfig
from exporter.metrics import Sample, sample
from taskmedic.connections import Connections, redis_now

SEP = b"\x06\x16"  # kombu's separator in binding members and priority queue names
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"


def priority_queue(queue: bytes, step: int) -> bytes:
    return queue if step == 0 else queue + SEP + str(step).encode()


@dataclass
class CeleryQueueCollector(RedisQueueCollector):
    # delivery tag → queue: a tag's message never changes, so each body is read and parsed once
    _queue_of_tag: dict[bytes, bytes] = field(default_factory=dict, init=False, repr=False)
    async def _discover(self) -> tuple[set[bytes], dict[bytes, bytes]]:
        """Queue names and routing key → queue, from kombu's `_kombu.binding.<exchange>` sets.

        The binding sets have known names, so no SCAN of the keyspace (which holds every
        `celery-task-meta-*` result) is needed."""
        src = self.source
        names = {n.encode() for n in src.names}
        routes: dict[bytes, bytes] = {}
        if src.discover:
            async with self.client.pipeline(transaction=False) as pipe:
                for exchange in src.exchanges:
                    pipe.smembers(f"_kombu.binding.{exchange}")
                for members in await pipe.execute():
                    for member in members:
                        parts = member.split(SEP)
                        if len(parts) == 3 and parts[2]:
                            routes[parts[0]] = parts[2]
                            names.add(parts[2])
        return set(sorted(names)[: src.max_queues]), routes

    async def collect(self) -> list[Sample]:
        src = self.source
        names, routes = await self._discover()
        queues = sorted(names)
        steps = sorted({0, *src.priority_steps})
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            for q in queues:
                for step in steps:
                    pipe.llen(priority_queue(q, step))
            pipe.zrange(UNACKED_INDEX, 0, src.max_unacked_scanned - 1, withscores=True)
            replies = await pipe.execute()
        now = redis_now(replies[0])
        lengths = replies[1:-1]
        in_flight: list[tuple[bytes, float]] = replies[-1]
        depth = {q: sum(lengths[i * len(steps):(i + 1) * len(steps)]) for i, q in enumerate(queues)}

        unacked: Counter[bytes] = Counter()
        stale: Counter[bytes] = Counter()
        await self._learn_queues([tag for tag, _ in in_flight], routes)
        for tag, delivered in in_flight:
            queue = self._queue_of_tag.get(tag)
            if queue is None:
                continue  # acked between the two reads
            age = max(now - delivered, 0.0)
            unacked[queue] += 1
            if age > src.visibility_timeout:
                stale[queue] += 1
        system = self.system_name
        out: list[Sample] = []
        for q in sorted(set(queues) | set(unacked)):
            label = q.decode(errors="replace")
            out.append(sample("taskmedic_queue_depth", depth.get(q, 0), system=system, queue=label))
            out.append(sample("taskmedic_queue_unacked", unacked[q], system=system, queue=label))
        out.append(sample("taskmedic_tasks", sum(depth.values()), system=system, status="queued"))
        out.append(sample("taskmedic_tasks", sum(unacked.values()), system=system, status="unacked"))
        out.append(sample("taskmedic_stuck_tasks", sum(stale.values()), system=system, status="unacked",
                          reason="unacked_too_long"))
        return out

    async def _learn_queues(self, tags: list[bytes], routes: dict[bytes, bytes]) -> None:
        """Read the bodies of tags not seen before; forget tags no longer in flight."""
        current = set(tags)
        self._queue_of_tag = {t: q for t, q in self._queue_of_tag.items() if t in current}
        unknown = [t for t in tags if t not in self._queue_of_tag]
        if unknown:
            payloads = await self.client.hmget(UNACKED, unknown)
            for tag, payload in zip(unknown, payloads, strict=True):
                if payload is not None:
                    self._queue_of_tag[tag] = self._queue_of(payload, routes)

    @staticmethod
    def _queue_of(payload: bytes | str, routes: dict[bytes, bytes]) -> bytes:
        """kombu stores `[message, exchange, routing_key]`; the routing key leads to the queue."""
        try:
            _, _, routing_key = json.loads(payload)
            key = str(routing_key).encode()
        except (ValueError, TypeError):
            return b"unknown"
        return routes.get(key, key)


def build(config: ExporterConfig, connections: Connections) -> list[CeleryQueueCollector]:
    return [CeleryQueueCollector(n, s, connections) for n, s in systems_of_type(config.systems, "celery")]
