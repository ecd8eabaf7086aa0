"""The remediator's metrics (names fixed by the contract), in a registry owned by one app."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder

from remediator.alert import OUTCOMES
from remediator.pause import Pause
from taskmedic.reload import ReloadStatus
from taskmedic.selfmetrics import add_self_metrics

# `*_created` series double every counter's cardinality and no dashboard or alert reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self, playbooks: Iterable[str], reload_status: Callable[[], ReloadStatus] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        if reload_status is not None:
            add_self_metrics(r, reload_status)
        # exposed as taskmedic_remediation_runs_total (prometheus_client adds _total)
        self.runs = Counter("taskmedic_remediation_runs", "Finished playbook runs by outcome (updated as runs end).",
                            ["playbook", "outcome"], registry=r)
        self.duration = Histogram("taskmedic_remediation_duration_seconds",
                                  "Time from claiming a run to recording its outcome.", ["playbook"],
                                  buckets=(0.05, 0.25, 1, 5, 15, 60, 300, 900), registry=r)
        self.webhook = Counter("taskmedic_webhook_requests", "POST /alerts requests by HTTP status code.",
                               ["code"], registry=r)
        self.circuit = Gauge("taskmedic_playbook_circuit_open",
                             "1 while a playbook's max_runs_per_hour is used up (refreshed every few seconds).",
                             ["playbook"], registry=r)
        self.unmatched = Counter("taskmedic_alerts_unmatched", "Alerts received that no playbook matches.",
                                 registry=r)
        self.over_cap = Counter("taskmedic_alerts_over_cap",
                                "Alerts not journaled because one POST carried more than max_alerts_per_post "
                                "for their playbook (answered as suppressed).", ["playbook"], registry=r)
        self.journal_up = Gauge("taskmedic_remediator_journal_up",
                                "1 when the journal database answered the last query (refreshed every few seconds).",
                                registry=r)
        self.paused = Gauge("taskmedic_remediation_paused_since_timestamp_seconds",
                            "Unix time since which remediation is paused, per scope (a playbook, or * for all); "
                            "absent when not paused (refreshed every few seconds).", ["scope"], registry=r)
        self.add_playbooks(playbooks)

    def show_pauses(self, pauses: Iterable[Pause]) -> None:
        self.paused.clear()
        for pause in pauses:
            self.paused.labels(pause.scope).set(pause.paused_at.timestamp())

    def add_playbooks(self, playbooks: Iterable[str]) -> None:
        """Every series exists from the start (and from a reload), so rate() and alerts see zeros."""
        for name in playbooks:
            self.circuit.labels(name).set(0)
            self.over_cap.labels(name)
            for outcome in OUTCOMES:
                self.runs.labels(name, outcome)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
