"""The immutable result of the latest collection, swapped in whole after each collector run.

`/metrics` only renders a snapshot (cached per snapshot and format), so a scrape never touches
a database, and series of a failed collector or of label sets that vanished from the data
disappear with the snapshot that no longer holds them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from exporter.metrics import FAMILIES, Sample


@dataclass(frozen=True)
class CollectorResult:
    samples: tuple[Sample, ...] = ()
    up: bool = False
    duration: float = 0.0
    last_success: float = 0.0  # unix time; 0 before the first success
    error: str | None = None
    errors: int = 0  # failed runs since start: a collector that flaps between scrapes still shows
    subject: tuple[str, str] = ("", "")  # ("system", "cape"): joins its series with the collector's


@dataclass(frozen=True)
class Snapshot:
    results: Mapping[str, CollectorResult]
    _rendered: dict[str, tuple[bytes, str]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def empty(cls, subjects: Mapping[str, tuple[str, str]]) -> Snapshot:
        """Every collector, named, before its first run (`subjects`: name → its joinable label)."""
        return cls(MappingProxyType({n: CollectorResult(subject=s) for n, s in subjects.items()}))

    def with_result(self, name: str, result: CollectorResult) -> Snapshot:
        results = dict(self.results)
        previous = results.get(name, CollectorResult())
        result = replace(result, errors=previous.errors + (0 if result.up else 1), subject=previous.subject,
                         last_success=result.last_success if result.up else previous.last_success)
        results[name] = result
        return Snapshot(MappingProxyType(results))

    def carried_into(self, subjects: Mapping[str, tuple[str, str]]) -> Snapshot:
        """A snapshot for a new set of collectors (after a reload): a collector that kept its name
        keeps its last result until it runs again, so /metrics does not go blank meanwhile."""
        return Snapshot(MappingProxyType({n: replace(self.results.get(n, CollectorResult()), subject=s)
                                          for n, s in subjects.items()}))

    def _self_families(self) -> Iterator[Metric]:
        """taskmedic_collector_*: what the runtime measured of each collector, labelled with the
        collector and with what it watches (system, path or backup), so they join its series."""
        per_result: dict[str, Callable[[CollectorResult], float]] = {
            "taskmedic_collector_up": lambda r: 1.0 if r.up else 0.0,
            "taskmedic_collector_duration_seconds": lambda r: r.duration,
            "taskmedic_collector_last_success_timestamp_seconds": lambda r: r.last_success,
        }
        for name, value in per_result.items():
            gauge = GaugeMetricFamily(name, FAMILIES[name].help)
            for collector, r in sorted(self.results.items()):
                gauge.add_sample(name, _collector_labels(collector, r), value(r))
            yield gauge
        errors = CounterMetricFamily("taskmedic_collector_errors", "Failed runs of the collector since the "
                                     "process started (counted by the runtime after every run).")
        for collector, r in sorted(self.results.items()):
            errors.add_sample("taskmedic_collector_errors_total", _collector_labels(collector, r), r.errors)
        yield errors

    def families(self) -> Iterator[Metric]:
        yield from self._self_families()
        grouped: dict[str, list[Sample]] = {}
        for _name, r in sorted(self.results.items()):
            if r.up:
                for s in r.samples:
                    grouped.setdefault(s.name, []).append(s)
        for name, samples in grouped.items():
            fam = FAMILIES[name]
            metric = GaugeMetricFamily(name, fam.help, labels=list(fam.labels))
            for s in samples:
                labels = dict(s.labels)
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


def _collector_labels(collector: str, result: CollectorResult) -> dict[str, str]:
    key, value = result.subject
    return {"collector": collector, key: value} if key else {"collector": collector}


def concatenate(parts: list[bytes], content_type: str) -> bytes:
    """Several registries' expositions as one body: OpenMetrics allows one `# EOF`, at the end."""
    if not content_type.startswith("application/openmetrics-text"):
        return b"".join(parts)
    eof = b"# EOF\n"
    return b"".join(p.removesuffix(eof) for p in parts) + eof


class _Families:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return self.snapshot.families()
