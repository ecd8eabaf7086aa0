"""HarborQueueCollector: Harbor's job service queues (gocraft/work layout under a namespace):
`<ns>:jobs:<TYPE>` lists (new jobs pushed left, taken from the right), in-progress lists
`<ns>:jobs:<TYPE>:<pool>:inprogress`, job types in `<ns>:known_jobs`, worker pools in
`<ns>:worker_pools`. All names are derived from those two sets: no SCAN of the keyspace."""

from __future__ import annotations

import json
from dataclasses import dataclass

from exporter.collectors.redis_base import RedisQueueCollector, systems_of_type
from exporter.config import ExporterConfig
from exporter.metrics import Sample, sample
from taskmedic.connections import Connections, redis_now


def enqueued_at(raw: bytes | None) -> float | None:
    try:
        return float(json.loads(raw)["t"]) if raw else None
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class HarborQueueCollector(RedisQueueCollector):
    @property
    def prefix(self) -> str:
        ns = self.source.namespace or ""
        return ns if ns.endswith(":") else ns + ":"

    async def collect(self) -> list[Sample]:
        src, prefix = self.source, self.prefix
        jobs = prefix + "jobs:"
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.smembers(prefix + "known_jobs")
            pipe.smembers(prefix + "worker_pools")
            now_reply, known, pools = await pipe.execute()
        now = redis_now(now_reply)
        names = set(src.names)
        if src.discover:
            names |= {k.decode(errors="replace") for k in known}
        queues = sorted(names)[: src.max_queues]
        pool_ids = sorted(p.decode(errors="replace") for p in pools)
        async with self.client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.llen(jobs + q)
                pipe.lindex(jobs + q, -1)
                for pool in pool_ids:
                    pipe.llen(f"{jobs}{q}:{pool}:inprogress")
            replies = await pipe.execute()
        width = 2 + len(pool_ids)
        out: list[Sample] = []
        system = self.system_name
        for i, q in enumerate(queues):
            depth, head, *running = replies[i * width:(i + 1) * width]
            oldest = enqueued_at(head)
            out.append(sample("taskmedic_queue_depth", depth, system=system, queue=q))
            out.append(sample("taskmedic_queue_unacked", sum(running), system=system, queue=q))
            out.append(sample("taskmedic_queue_oldest_age_seconds", max(now - oldest, 0.0) if oldest else 0.0,
                              system=system, queue=q))
        return out


def build(config: ExporterConfig, connections: Connections) -> list[HarborQueueCollector]:
    return [HarborQueueCollector(n, s, connections) for n, s in systems_of_type(config.systems, "harbor")]
