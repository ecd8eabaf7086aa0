"""The immutable result of the latest collection, swapped in whole after each collector run.

`/metrics` only renders a snapshot (cached per snapshot and format), so a scrape never touches
a database, and series of a failed collector or of label sets that vanished from the data
disappear with the snapshot that no longer holds them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from exporter.metrics import FAMILIES, Sample


@dataclass(frozen=True)
class CollectorResult:
    samples: tuple[Sample, ...] = ()
    up: bool = False
    duration: float = 0.0
    last_success: float = 0.0  # unix time; 0 before the first success
    error: str | None = None


@dataclass(frozen=True)
class Snapshot:
    results: Mapping[str, CollectorResult]
    _rendered: dict[str, tuple[bytes, str]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def empty(cls, names: list[str]) -> Snapshot:
        return cls(MappingProxyType({n: CollectorResult() for n in names}))

    def with_result(self, name: str, result: CollectorResult) -> Snapshot:
        results = dict(self.results)
        previous = results.get(name)
        if not result.up and previous is not None:
            result = replace(result, last_success=previous.last_success)
        results[name] = result
        return Snapshot(MappingProxyType(results))

    def families(self) -> Iterator[Metric]:
        grouped: dict[str, list[Sample]] = {}
        for name, r in sorted(self.results.items()):
            grouped.setdefault("taskmedic_collector_up", []).append(
                Sample("taskmedic_collector_up", (("collector", name),), 1.0 if r.up else 0.0))
            grouped.setdefault("taskmedic_collector_duration_seconds", []).append(
                Sample("taskmedic_collector_duration_seconds", (("collector", name),), r.duration))
            grouped.setdefault("taskmedic_collector_last_success_timestamp_seconds", []).append(
                Sample("taskmedic_collector_last_success_timestamp_seconds", (("collector", name),),
                       r.last_success))
            if r.up:
                for s in r.samples:
                    grouped.setdefault(s.name, []).append(s)
        for name, samples in grouped.items():
            fam = FAMILIES.get(name)
            if fam is None:
                continue  # the collectors check their samples; never let one blank the rest
            metric = GaugeMetricFamily(name, fam.help, labels=list(fam.labels))
            for s in samples:
                labels = dict(s.labels)
                if labels.keys() == set(fam.labels):
                    metric.add_metric([labels[k] for k in fam.labels], s.value)
            yield metric

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """Exposition bytes and content type for an Accept header, rendered once per snapshot."""
        encoder, content_type = choose_encoder(accept or "")
        cached = self._rendered.get(content_type)
        if cached is None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Families(self))
            cached = (encoder(registry), content_type)
            self._rendered[content_type] = cached
        return cached


class _Families:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return self.snapshot.families()
