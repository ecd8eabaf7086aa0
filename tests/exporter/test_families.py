"""Metric families: each collector kind declares what it emits, a misspelt declaration stops the
exporter at start-up, and a collector that emits something undeclared is the only one to go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from exporter.collectors import REGISTRY, Kind, UndeclaredFamily, build_all, lists
from exporter.collectors.base import Declared
from exporter.config import ExporterConfig
from exporter.metrics import Sample, sample
from exporter.runtime import run_once
from exporter.snapshot import CollectorResult, Snapshot
from taskmedic.config import load
from taskmedic.connections import Connections


def test_a_misspelt_metric_family_stops_the_exporter_at_start_up_and_names_it(tmp: Path) -> None:
    (tmp / "taskmedic.yml").write_text(f"disks: [{{path: {tmp}}}]\n")
    config = load(ExporterConfig, tmp / "taskmedic.yml", environ={})
    registry = {**REGISTRY, "lists": Kind(lists.build, ("taskmedic_queu_depth",))}

    with pytest.raises(UndeclaredFamily) as err:
        build_all(config, Connections("taskmedic-tests"), registry)

    assert str(err.value) == ("collector 'lists' declares metric family 'taskmedic_queu_depth', which "
                              "exporter/metrics.py does not declare (did you mean 'taskmedic_queue_depth'?)")


@dataclass
class Emitting:
    """A collector that returns fixed samples."""

    name: str
    samples: list[Sample]
    subject: tuple[str, str] = ("", "")
    interval: float = 15.0
    timeout: float = 5.0

    async def collect(self) -> list[Sample]:
        return self.samples


async def test_a_collector_emitting_an_undeclared_family_goes_down_and_the_others_still_serve() -> None:
    typo = Declared(Emitting("queues:jobs", [sample("taskmedic_queu_depth", 3, system="jobs", queue="q")]),
                    frozenset({"taskmedic_queue_depth"}))
    wrong_labels = Declared(Emitting("queues:other", [sample("taskmedic_queue_depth", 3, system="other")]),
                            frozenset({"taskmedic_queue_depth"}))
    good = Declared(Emitting("disk:/", [sample("taskmedic_disk_free_ratio", 0.5, path="/")]),
                    frozenset({"taskmedic_disk_free_ratio"}))

    results = {c.name: await run_once(c) for c in (typo, wrong_labels, good)}
    snapshot = Snapshot.empty({name: ("", "") for name in results})
    for name, result in results.items():
        snapshot = snapshot.with_result(name, result)
    body, _ = snapshot.render(None)

    assert results["queues:jobs"].error == "UndeclaredSample: emitted 'taskmedic_queu_depth', not among its " \
                                           "declared families"
    assert "labels ('system',)" in (results["queues:other"].error or "")
    text = body.decode()
    assert 'taskmedic_collector_up{collector="queues:jobs"} 0.0' in text
    assert 'taskmedic_collector_up{collector="queues:other"} 0.0' in text
    assert 'taskmedic_disk_free_ratio{path="/"} 0.5' in text


def test_an_unknown_sample_in_a_snapshot_does_not_blank_metrics() -> None:
    snapshot = Snapshot.empty({"a": ("", ""), "b": ("", "")}).with_result(
        "a", CollectorResult(samples=(sample("taskmedic_nonsense", 1), sample("taskmedic_queue_depth", 1, system="s")),
                             up=True)).with_result(
        "b", CollectorResult(samples=(sample("taskmedic_disk_free_ratio", 0.25, path="/data"),), up=True))

    text = snapshot.render(None)[0].decode()

    assert 'taskmedic_disk_free_ratio{path="/data"} 0.25' in text
    assert "taskmedic_nonsense" not in text and 'system="s"' not in text
