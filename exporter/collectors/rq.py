"""RqQueueCollector: RQ's queues and job registries (`taskmedic.wire.rq`). A job in the started
registry whose score, its lease's end, has passed was abandoned by a dead worker."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.collectors.redis_base import RedisQueueCollector, systems_of_type
from exporter.config import ExporterConfig
from exporter.metrics import Sample, sample
from taskmedic.connections import Connections, redis_now
from taskmedic.wire import rq


@dataclass
class RqQueueCollector(RedisQueueCollector):
    async def collect(self) -> list[Sample]:
        src = self.source
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.smembers(rq.QUEUES)
            now_reply, members = await pipe.execute()
        now = redis_now(now_reply)
        names = set(src.names)
        if src.discover:
            names |= {rq.queue_name(m) for m in members}
        queues = sorted(names)[: src.max_queues]
        async with self.client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.llen(rq.queue_key(q))
                pipe.lindex(rq.queue_key(q), 0)  # RQ pushes right and pops left: index 0 is oldest
                pipe.zcount(rq.registry_key("started", q), "-inf", now)
                for kind in rq.REGISTRY_PREFIXES:
                    pipe.zcard(rq.registry_key(kind, q))
            replies = await pipe.execute()
        width = 3 + len(rq.REGISTRY_PREFIXES)
        heads: dict[str, bytes] = {}
        totals = dict.fromkeys(["queued", *rq.REGISTRY_PREFIXES], 0)
        abandoned = 0
        out: list[Sample] = []
        system = self.system_name
        for i, q in enumerate(queues):
            depth, head, expired, *sizes = replies[i * width:(i + 1) * width]
            registry = dict(zip(rq.REGISTRY_PREFIXES, sizes, strict=True))
            totals["queued"] += depth
            for status, n in registry.items():
                totals[status] += n
            abandoned += expired
            if head:
                heads[q] = head
            out.append(sample("taskmedic_queue_depth", depth, system=system, queue=q))
            out.append(sample("taskmedic_queue_unacked", registry["started"], system=system, queue=q))
        enqueued: dict[str, float | None] = {}
        if heads:
            async with self.client.pipeline(transaction=False) as pipe:
                for job_id in heads.values():
                    pipe.hget(rq.job_key(job_id), "enqueued_at")
                enqueued = {q: rq.parse_time(t) for q, t in zip(heads, await pipe.execute(), strict=True)}
        for q in queues:
            at = enqueued.get(q)
            out.append(sample("taskmedic_queue_oldest_age_seconds", max(now - at, 0.0) if at else 0.0,
                              system=system, queue=q))
        for status, n in totals.items():
            out.append(sample("taskmedic_tasks", n, system=system, status=status))
        out.append(sample("taskmedic_stuck_tasks", abandoned, system=system, status="started", reason="abandoned"))
        return out


def build(config: ExporterConfig, connections: Connections) -> list[RqQueueCollector]:
    return [RqQueueCollector(n, s, connections) for n, s in systems_of_type(config.systems, "rq")]
