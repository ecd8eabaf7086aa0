"""The collector registry: config section → collectors, each kind with the metric families it
emits. Each module owns one kind. The declarations are checked against the catalog
(`exporter.metrics.FAMILIES`) when the collectors are built, and every run's samples against
the declarations, so a misspelt family fails that collector, never `/metrics` as a whole."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from exporter.collectors import backups, celery, disk, engine, harbor, lists, rq, tasks
from exporter.collectors.base import Collector, Declared, Kind
from exporter.config import ExporterConfig
from exporter.metrics import FAMILIES
from taskmedic.connections import Connections

_QUEUES = ("taskmedic_queue_depth", "taskmedic_queue_unacked", "taskmedic_queue_oldest_age_seconds")
_TASK_COUNTS = ("taskmedic_tasks", "taskmedic_stuck_tasks")
_JUDGEMENT = ("taskmedic_judgement_trusted", "taskmedic_clock_skew_seconds")

REGISTRY: dict[str, Kind] = {
    "tasks": Kind(tasks.build, (*_TASK_COUNTS, "taskmedic_task_oldest_age_seconds", *_JUDGEMENT)),
    "celery": Kind(celery.build, (*_QUEUES, *_TASK_COUNTS)),
    "rq": Kind(rq.build, (*_QUEUES, *_TASK_COUNTS, "taskmedic_judgement_trusted")),
    "harbor": Kind(harbor.build, _QUEUES),
    "engine": Kind(engine.build, (*_QUEUES, *_TASK_COUNTS, *_JUDGEMENT)),
    "lists": Kind(lists.build, ("taskmedic_queue_depth",)),
    "disk": Kind(disk.build, ("taskmedic_disk_free_ratio", "taskmedic_disk_free_bytes", "taskmedic_disk_size_bytes",
                              "taskmedic_disk_inodes_free_ratio")),
    "backups": Kind(backups.build, (
        "taskmedic_backup_size_bytes", "taskmedic_backup_previous_size_bytes",
        "taskmedic_backup_last_modified_timestamp_seconds", "taskmedic_backup_last_valid_timestamp_seconds",
        "taskmedic_backup_valid", "taskmedic_backup_in_progress", "taskmedic_backup_files",
        "taskmedic_backup_data_verified")),
}


class UndeclaredFamily(ValueError):
    """A collector kind declares a metric family the catalog does not have."""


def check_families(registry: Mapping[str, Kind]) -> None:
    for key, kind in registry.items():
        for family in kind.emits:
            if family not in FAMILIES:
                close = difflib.get_close_matches(family, list(FAMILIES), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UndeclaredFamily(f"collector {key!r} declares metric family {family!r}, which "
                                       f"exporter/metrics.py does not declare{hint}")


def build_all(config: ExporterConfig, connections: Connections,
              registry: Mapping[str, Kind] = REGISTRY) -> list[Collector]:
    check_families(registry)
    return [Declared(c, frozenset(kind.emits)) for kind in registry.values() for c in kind.build(config, connections)]


__all__ = ["REGISTRY", "Collector", "Kind", "UndeclaredFamily", "build_all", "check_families"]
