"""Run the exporter's collectors in-process against real servers and read their samples."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis

from exporter.collectors import Collector, build_all
from exporter.config import ExporterConfig
from exporter.runtime import run_once
from exporter.snapshot import CollectorResult
from taskmedic.config import load
from taskmedic.config.model import QueueSource
from taskmedic.connections import Connections


async def collect(tmp: Path, config_text: str) -> dict[str, CollectorResult]:
    path = tmp / "taskmedic.yml"
    path.write_text(config_text)
    config = load(ExporterConfig, path, environ={})
    connections = Connections("taskmedic-tests")
    try:
        return {c.name: await run_once(c) for c in build_all(config, connections)}
    finally:
        await connections.close()


async def collect_up(tmp: Path, config_text: str, collector: str) -> CollectorResult:
    """One cycle of the config's collectors; the named one's result, which must be up."""
    result = (await collect(tmp, config_text))[collector]
    assert result.up, result.error
    return result


@asynccontextmanager
async def queue_collector(tmp: Path, config_text: str,
                          system: str) -> AsyncIterator[tuple[Collector, QueueSource, aioredis.Redis]]:
    """The `queues:<system>` collector of the config, to be kept across cycles, with that system's
    queue source and a client of its Redis (all closed at the end)."""
    path = tmp / "taskmedic.yml"
    path.write_text(config_text)
    loaded = load(ExporterConfig, path, environ={})
    watched = loaded.systems[system]
    assert watched.queues is not None and watched.redis is not None
    connections = Connections("taskmedic-tests")
    try:
        (collector,) = [c for c in build_all(loaded, connections) if c.name == f"queues:{system}"]
        yield collector, watched.queues, connections.redis(watched.redis)
    finally:
        await connections.close()


def value(result: CollectorResult, name: str, **labels: str) -> float | None:
    want = set(labels.items())
    hits = [s.value for s in result.samples if s.name == name and want <= set(s.labels)]
    assert len(hits) <= 1, f"{name}{labels} matches {len(hits)} samples"
    return hits[0] if hits else None


def held_counts(r: CollectorResult, queue: str, reason: str) -> dict[str, float | None]:
    """A one-queue system's depth and unacked, its queued and held tasks, the held ones stuck for
    `reason`, and whether the judgement is trusted."""
    return {"depth": value(r, "taskmedic_queue_depth", queue=queue),
            "unacked": value(r, "taskmedic_queue_unacked", queue=queue),
            "queued": value(r, "taskmedic_tasks", status="queued"),
            "held": value(r, "taskmedic_tasks", status="held"),
            "stuck": value(r, "taskmedic_stuck_tasks", status="held", reason=reason),
            "trusted": value(r, "taskmedic_judgement_trusted")}
