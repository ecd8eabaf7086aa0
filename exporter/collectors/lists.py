"""ListQueueCollector: plain Redis lists named in `queues.names` (glob patterns are discovered
with SCAN, capped by `max_queues`)."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.collectors.redis_base import RedisQueueCollector, scan_keys, systems_of_type
from exporter.config import ExporterConfig
from exporter.metrics import Sample, sample
from taskmedic.connections import Connections


@dataclass
class ListQueueCollector(RedisQueueCollector):
    async def collect(self) -> list[Sample]:
        src = self.source
        names: set[str] = set()
        for name in src.names:
            if any(c in name for c in "*?[") and src.discover:
                names |= {k.decode(errors="replace") for k in await scan_keys(self.client, name, src.max_queues)}
            else:
                names.add(name)
        queues = sorted(names)[: src.max_queues]
        async with self.client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.llen(q)
            depths = await pipe.execute()
        return [sample("taskmedic_queue_depth", d, system=self.system_name, queue=q)
                for q, d in zip(queues, depths, strict=True)]


def build(config: ExporterConfig, connections: Connections) -> list[ListQueueCollector]:
    return [ListQueueCollector(n, s, connections) for n, s in systems_of_type(config.systems, "list")]
