"""Run the exporter's collectors in-process against real servers and read their samples."""

from __future__ import annotations

from pathlib import Path

from exporter.collectors import build_all
from exporter.config import ExporterConfig
from exporter.runtime import run_once
from exporter.snapshot import CollectorResult
from taskmedic.config import load
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


def value(result: CollectorResult, name: str, **labels: str) -> float | None:
    want = set(labels.items())
    hits = [s.value for s in result.samples if s.name == name and want <= set(s.labels)]
    assert len(hits) <= 1, f"{name}{labels} matches {len(hits)} samples"
    return hits[0] if hits else None
