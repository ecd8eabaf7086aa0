"""What a collector is: a name, a schedule, and `collect()` returning samples or raising."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from exporter.config.model import ExporterConfig, System
from exporter.connections import Connections
from exporter.metrics import Sample


class Collector(Protocol):
    @property
    def name(self) -> str:
        """The `collector` label, e.g. "tasks:cape"."""
        ...

    @property
    def interval(self) -> float: ...

    @property
    def timeout(self) -> float: ...

    async def collect(self) -> list[Sample]:
        """Read the source once. Raise on failure; the runtime times, catches and reports it."""
        ...


@dataclass
class SystemCollector:
    """What collectors of one configured system share: its name, settings, schedule and connections."""

    system_name: str
    system: System
    connections: Connections

    @property
    def interval(self) -> float:
        return self.system.interval

    @property
    def timeout(self) -> float:
        return self.system.timeout


Factory = Callable[[ExporterConfig, Connections], Sequence[Collector]]
