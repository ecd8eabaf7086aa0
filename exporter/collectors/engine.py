"""EngineQueueCollector: a Redis job engine described by configuration (`queues: {type: engine}`,
profiles dramatiq, bullmq, sidekiq, arq): its queues, the work its workers hold, and the held
work whose holder is dead by the engine's own evidence (`taskmedic.detection.engine`)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from exporter.collectors.redis_base import RedisQueueCollector, systems_of_type
from exporter.config import ExporterConfig
from exporter.metrics import Sample, sample
from taskmedic.connections import Connections
from taskmedic.detection import engine

log = logging.getLogger("taskmedic.exporter.engine")


@dataclass
class EngineQueueCollector(RedisQueueCollector):
    # when each `key` heartbeat was first seen missing, across cycles (its dead_after)
    _absences: engine.Absences = field(default_factory=engine.Absences, init=False, repr=False)
    _unreadable: list[str] = field(default_factory=list, init=False, repr=False)  # logged when it changes

    async def collect(self) -> list[Sample]:
        state = await engine.observe(self.client, self.source, self._absences)
        system = self.system_name
        reason = engine.engine_of(self.source).reason
        held = Counter(h.queue for h in state.held)
        out: list[Sample] = []
        for q in sorted(set(state.queues) | set(held)):
            queue = state.queues.get(q, engine.QueueState(0, None))
            age = max(state.now - queue.oldest_at, 0.0) if queue.oldest_at is not None else 0.0
            out += [sample("taskmedic_queue_depth", queue.depth, system=system, queue=q),
                    sample("taskmedic_queue_unacked", held[q], system=system, queue=q),
                    sample("taskmedic_queue_oldest_age_seconds", age, system=system, queue=q)]
        # more held work than max_held, or keys of another type: not all of it judged
        trusted = not state.unknown and not state.truncated and not state.unreadable
        if state.unreadable != self._unreadable:
            for why in state.unreadable[:20]:
                log.warning("judgement not trusted: a key has another type than the engine's layout",
                            extra={"system": system, "why": why})
            self._unreadable = state.unreadable
        out += [sample("taskmedic_tasks", sum(q.depth for q in state.queues.values()), system=system, status="queued"),
                sample("taskmedic_tasks", len(state.held), system=system, status="held"),
                sample("taskmedic_stuck_tasks", len(state.dead), system=system, status="held", reason=reason),
                sample("taskmedic_judgement_trusted", 1 if trusted else 0, system=system),
                sample("taskmedic_clock_skew_seconds", state.skew, system=system)]
        return out


def build(config: ExporterConfig, connections: Connections) -> list[EngineQueueCollector]:
    return [EngineQueueCollector(n, s, connections) for n, s in systems_of_type(config.systems, "engine")]
