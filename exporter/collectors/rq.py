"""RqQueueCollector: RQ's queues and job registries (`taskmedic.wire.rq`).

Two reasons a started job is stuck:
- `abandoned`: its started-registry entry's score, its lease's end, has passed (60-90 s after
  its worker died; RQ's own cleanup fails it up to ~15 min later).
- `worker_gone`: its worker is dead by RQ's own evidence, lease or not: the worker's key has
  missed a heartbeat and no connection subscribes to its channel (`rq.liveness`). An entry whose
  lease has also run out counts under both, so the alert of `worker_gone` is not reset when the
  lease ends.
A job whose worker's key says dead while its channel still has a subscriber (an orphaned horse
still running it, or a half-open connection of a lost host) is not judged: it makes
`taskmedic_judgement_trusted` 0 until it ends, as does a liveness reply that could not be read
or more started entries than `max_unacked_scanned`."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from exporter.collectors.redis_base import RedisQueueCollector, systems_of_type
from exporter.config import ExporterConfig
from exporter.metrics import Sample, sample
from taskmedic.connections import Connections, redis_now, redis_text
from taskmedic.wire import rq

log = logging.getLogger("taskmedic.exporter.rq")


@dataclass(frozen=True)
class Judged:
    gone: int = 0
    orphaned: int = 0
    unknown: int = 0


@dataclass
class RqQueueCollector(RedisQueueCollector):
    _doubts: list[str] = field(default_factory=list, init=False, repr=False)

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
                pipe.zrange(rq.registry_key("started", q), 0, src.max_unacked_scanned - 1)
                for kind in rq.REGISTRY_PREFIXES:
                    pipe.zcard(rq.registry_key(kind, q))
            replies = await pipe.execute()
        width = 4 + len(rq.REGISTRY_PREFIXES)
        heads: dict[str, bytes] = {}
        entries: list[tuple[str, str]] = []
        truncated = False
        totals = dict.fromkeys(["queued", *rq.REGISTRY_PREFIXES], 0)
        abandoned = 0
        out: list[Sample] = []
        system = self.system_name
        for i, q in enumerate(queues):
            depth, head, expired, started, *sizes = replies[i * width:(i + 1) * width]
            registry = dict(zip(rq.REGISTRY_PREFIXES, sizes, strict=True))
            totals["queued"] += depth
            for status, n in registry.items():
                totals[status] += n
            abandoned += expired
            entries += [(q, redis_text(m)) for m in started]
            truncated |= registry["started"] > len(started)
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
        judged = await self._judge(await rq.started_jobs(self.client, entries), src.worker_ttl_below)
        for status, n in totals.items():
            out.append(sample("taskmedic_tasks", n, system=system, status=status))
        doubts = self._doubt(judged, truncated, src.max_unacked_scanned)
        trusted = not doubts
        out += [sample("taskmedic_stuck_tasks", abandoned, system=system, status="started", reason="abandoned"),
                sample("taskmedic_stuck_tasks", judged.gone, system=system, status="started", reason="worker_gone"),
                sample("taskmedic_judgement_trusted", 1 if trusted else 0, system=system)]
        return out

    def _doubt(self, judged: Judged, truncated: bool, cap: int) -> list[str]:
        """Why some started jobs were not judged; logged once when it starts or changes."""
        doubts = []
        if judged.orphaned:
            doubts.append(f"worker_gone: {judged.orphaned} started job(s) whose worker's key missed a heartbeat "
                          "while its rq:pubsub channel has a subscriber (an orphaned work horse still running "
                          "them, or a half-open connection of a lost host)")
        if judged.unknown:
            doubts.append(f"worker_gone: the liveness of {judged.unknown} started job(s)' workers could not be "
                          "read (PTTL or PUBSUB NUMSUB refused)")
        if truncated:
            doubts.append(f"worker_gone: a started registry has more than max_unacked_scanned ({cap}) entries")
        if doubts != self._doubts:
            for doubt in doubts:
                log.warning("judgement not trusted", extra={"system": self.system_name, "why": doubt})
            self._doubts = doubts
        return doubts

    async def _judge(self, jobs: list[rq.StartedJob], ttl_below: float) -> Judged:
        workers = sorted({j.worker for j in jobs})
        if not workers:
            return Judged()
        async with self.client.pipeline(transaction=False) as pipe:
            for w in workers:
                pipe.pttl(rq.worker_key(w))
                pipe.pubsub_numsub(rq.pubsub_channel(w))
            replies = await pipe.execute(raise_on_error=False)  # NOPERM on PUBSUB: unknown, not an error
        verdicts = {w: rq.liveness(_count(replies[2 * i]), _subscribers(replies[2 * i + 1]), ttl_below)
                    for i, w in enumerate(workers)}
        per_job = Counter(verdicts[j.worker] for j in jobs)
        return Judged(gone=per_job["gone"], orphaned=per_job["orphaned"], unknown=per_job["unknown"])


def _count(reply: Any) -> int | None:
    return reply if isinstance(reply, int) else None


def _subscribers(reply: Any) -> int | None:
    """`PUBSUB NUMSUB <channel>` → [(channel, n)]; None for an error reply."""
    if isinstance(reply, list) and len(reply) == 1:
        return _count(reply[0][1])
    return None


def build(config: ExporterConfig, connections: Connections) -> list[RqQueueCollector]:
    return [RqQueueCollector(n, s, connections) for n, s in systems_of_type(config.systems, "rq")]
