"""The collector registry: config section → collectors. Each module owns one kind."""

from __future__ import annotations

from exporter.collectors import backups, celery, disk, harbor, lists, rq, tasks
from exporter.collectors.base import Collector, Factory
from exporter.config import ExporterConfig
from taskmedic.connections import Connections

REGISTRY: dict[str, Factory] = {
    "tasks": tasks.build,
    "celery": celery.build,
    "rq": rq.build,
    "harbor": harbor.build,
    "lists": lists.build,
    "disk": disk.build,
    "backups": backups.build,
}


def build_all(config: ExporterConfig, connections: Connections) -> list[Collector]:
    return [c for factory in REGISTRY.values() for c in factory(config, connections)]


__all__ = ["REGISTRY", "Collector", "build_all"]
