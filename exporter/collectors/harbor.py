"""HarborQueueCollector: Harbor's job service queues (gocraft/work, `taskmedic.wire.gocraft`):
each job type's waiting jobs and the jobs every worker pool has in progress. All names are
derived from the sets of job types and pools: no SCAN of the keyspace."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.collectors.redis_base import RedisQueueCollector, systems_of_type
from exporter.config import ExporterConfig
from exporter.metrics import Sample, sample
from taskmedic.connections import Connections, redis_now
from taskmedic.wire import gocraft


@dataclass
class HarborQueueCollector(RedisQueueCollector):
    async def collect(self) -> list[Sample]:
        src = self.source
        keys = gocraft.Keys(src.namespace or "")
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.smembers(keys.known_jobs)
            pipe.smembers(keys.worker_pools)
            now_reply, known, pools = await pipe.execute()
        now = redis_now(now_reply)
        names = set(src.names)
        if src.discover:
            names |= {k.decode(errors="replace") for k in known}
        queues = sorted(names)[: src.max_queues]
        pool_ids = sorted(p.decode(errors="replace") for p in pools)
        async with self.client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.llen(keys.jobs(q))
                pipe.lindex(keys.jobs(q), -1)  # pushed left, taken from the right: -1 is oldest
                for pool in pool_ids:
                    pipe.llen(keys.in_progress(q, pool))
            replies = await pipe.execute()
        width = 2 + len(pool_ids)
        out: list[Sample] = []
        system = self.system_name
        for i, q in enumerate(queues):
            depth, head, *running = replies[i * width:(i + 1) * width]
            oldest = gocraft.enqueued_at(head)
            out.append(sample("taskmedic_queue_depth", depth, system=system, queue=q))
            out.append(sample("taskmedic_queue_unacked", sum(running), system=system, queue=q))
            out.append(sample("taskmedic_queue_oldest_age_seconds", max(now - oldest, 0.0) if oldest else 0.0,
                              system=system, queue=q))
        return out


def build(config: ExporterConfig, connections: Connections) -> list[HarborQueueCollector]:
    return [HarborQueueCollector(n, s, connections) for n, s in systems_of_type(config.systems, "harbor")]
