"""CeleryQueueCollector: Celery on kombu's Redis transport (`taskmedic.wire.kombu`): queues with
their priority sub-queues, and the messages in flight with their delivery times."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from exporter.collectors.redis_base import RedisQueueCollector, systems_of_type
from exporter.config import ExporterConfig
from exporter.metrics import Sample, sample
from taskmedic.connections import Connections, redis_now
from taskmedic.wire import kombu


@dataclass
class CeleryQueueCollector(RedisQueueCollector):
    # delivery tag → queue: a tag's message never changes, so each body is read and parsed once
    _queue_of_tag: dict[bytes, bytes] = field(default_factory=dict, init=False, repr=False)
    async def _discover(self) -> tuple[set[bytes], dict[bytes, bytes]]:
        """Queue names and routing key → queue, from the exchanges' binding sets.

        The binding sets have known names, so no SCAN of the keyspace (which holds every
        `celery-task-meta-*` result) is needed."""
        src = self.source
        names = {n.encode() for n in src.names}
        routes: dict[bytes, bytes] = {}
        if src.discover:
            async with self.client.pipeline(transaction=False) as pipe:
                for exchange in src.exchanges:
                    pipe.smembers(kombu.binding_key(exchange))
                for members in await pipe.execute():
                    for binding in filter(None, map(kombu.parse_binding, members)):
                        if binding.queue:
                            routes[binding.routing_key] = binding.queue
                            names.add(binding.queue)
        return set(sorted(names)[: src.max_queues]), routes

    async def collect(self) -> list[Sample]:
        src = self.source
        names, routes = await self._discover()
        queues = sorted(names)
        steps = src.priority_steps
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            for q in queues:
                for key in kombu.sub_queues(q, steps):
                    pipe.llen(key)
            pipe.zrange(kombu.UNACKED_INDEX, 0, src.max_unacked_scanned - 1, withscores=True)
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
            payloads = await self.client.hmget(kombu.UNACKED, unknown)
            for tag, payload in zip(unknown, payloads, strict=True):
                if payload is not None:
                    self._queue_of_tag[tag] = self._queue_of(payload, routes)

    @staticmethod
    def _queue_of(payload: bytes | str, routes: dict[bytes, bytes]) -> bytes:
        """The routing key of an `unacked` entry leads to its queue."""
        entry = kombu.parse_unacked(payload)
        if entry is None:
            return b"unknown"
        key = entry.routing_key.encode()
        return routes.get(key, key)


def build(config: ExporterConfig, connections: Connections) -> list[CeleryQueueCollector]:
    return [CeleryQueueCollector(n, s, connections) for n, s in systems_of_type(config.systems, "celery")]
