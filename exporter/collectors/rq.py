"""RqQueueCollector: RQ's queues and job registries. A job in the started registry (`rq:wip:<q>`)
whose score, its expiry time, has passed was abandoned by a dead worker."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from exporter.collectors.redis_base import RedisQueueCollector, systems_of_type
from exporter.config import ExporterConfig
from exporter.metrics import Sample, sample
from taskmedic.connections import Connections, redis_now

QUEUE_PREFIX = "rq:queue:"
REGISTRIES = {"started": "rq:wip:", "failed": "rq:failed:", "finished": "rq:finished:",
              "deferred": "rq:deferred:", "scheduled": "rq:scheduled:", "canceled": "rq:canceled:"}


def parse_rq_time(raw: bytes | None) -> float | None:
    """RQ writes `2026-11-23T10:00:00.123456Z` (UTC)."""
    if not raw:
        return None
    text = raw.decode(errors="replace").rstrip("Z")
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


@dataclass
class RqQueueCollector(RedisQueueCollector):
    async def collect(self) -> list[Sample]:
        src = self.source
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.smembers("rq:queues")
            now_reply, members = await pipe.execute()
        now = redis_now(now_reply)
        names = set(src.names)
        if src.discover:
            names |= {m.decode(errors="replace").removeprefix(QUEUE_PREFIX) for m in members}
        queues = sorted(names)[: src.max_queues]
        async with self.client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.llen(QUEUE_PREFIX + q)
                pipe.lindex(QUEUE_PREFIX + q, 0)  # RQ pushes right and pops left: index 0 is oldest
                pipe.zcount(REGISTRIES["started"] + q, "-inf", now)
                for prefix in REGISTRIES.values():
                    pipe.zcard(prefix + q)
            replies = await pipe.execute()
        width = 3 + len(REGISTRIES)
        heads: dict[str, bytes] = {}
        totals = dict.fromkeys(["queued", *REGISTRIES], 0)
        abandoned = 0
        out: list[Sample] = []
        system = self.system_name
        for i, q in enumerate(queues):
            depth, head, expired, *sizes = replies[i * width:(i + 1) * width]
            registry = dict(zip(REGISTRIES, sizes, strict=True))
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
                    pipe.hget(b"rq:job:" + job_id, "enqueued_at")
                enqueued = {q: parse_rq_time(t) for q, t in zip(heads, await pipe.execute(), strict=True)}
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
