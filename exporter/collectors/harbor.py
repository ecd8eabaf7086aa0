"""HarborQueueCollector: Harbor's job service queues (gocraft/work layout under a namespace):
`<ns>:jobs:<TYPE>` lists (new jobs pushed left, taken from the right), in-progress lists
`<ns>:jobs:<TYPE>:<pool>:inprogress`, job types in `<ns>:known_jobs`."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from exporter.collectors.redis_base import RedisQueueCollector, redis_now, scan_keys, systems_of_type
from exporter.config.model import ExporterConfig
from exporter.connections import Connections
from exporter.metrics import Sample, sample


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
            now_reply, known = await pipe.execute()
        now = redis_now(now_reply)
        names = set(src.names) | {k.decode(errors="replace") for k in known}
        inprogress: dict[str, list[bytes]] = {}
        if src.discover:
            for key in await scan_keys(self.client, jobs + "*", src.max_queues * 4):
                rest = key.decode(errors="replace")[len(jobs):]
                parts = rest.split(":")
                if len(parts) == 1:
                    names.add(rest)
                elif parts[-1] == "inprogress":
                    inprogress.setdefault(parts[0], []).append(key)
        queues = sorted(names)[: src.max_queues]
        async with self.client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.llen(jobs + q)
                pipe.lindex(jobs + q, -1)
            for keys in inprogress.values():
                for key in keys:
                    pipe.llen(key)
            replies = await pipe.execute()
        running: Counter[str] = Counter()
        lengths = iter(replies[2 * len(queues):])
        for q, keys in inprogress.items():
            running[q] = sum(next(lengths) for _ in keys)
        out: list[Sample] = []
        system = self.system_name
        for i, q in enumerate(queues):
            depth, oldest = replies[2 * i], enqueued_at(replies[2 * i + 1])
            out.append(sample("taskmedic_queue_depth", depth, system=system, queue=q))
            out.append(sample("taskmedic_queue_unacked", running[q], system=system, queue=q))
            out.append(sample("taskmedic_queue_oldest_age_seconds", max(now - oldest, 0.0) if oldest else 0.0,
                              system=system, queue=q))
        return out


def build(config: ExporterConfig, connections: Connections) -> list[HarborQueueCollector]:
    return [HarborQueueCollector(n, s, connections) for n, s in systems_of_type(config.systems, "harbor")]
