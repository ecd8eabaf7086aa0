"""Which playbooks an alert triggers: label matchers plus the alert's firing/resolved state.

A matcher value is an exact string, `~regex` (fully anchored, as in Alertmanager's `=~`), or
null / "" for a label that must be absent (Prometheus treats an empty label as no label).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from remediator.config import Playbook


@dataclass(frozen=True)
class AlertInfo:
    """One alert, as received and as journaled: what templates and matchers see."""

    fingerprint: str
    status: str
    starts_at: datetime
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    ends_at: datetime | None = None
    generator_url: str = ""

    def variables(self) -> dict[str, Any]:
        return {"labels": dict(self.labels), "annotations": dict(self.annotations),
                "alert": {"status": self.status, "startsAt": self.starts_at.isoformat(),
                          "endsAt": self.ends_at.isoformat() if self.ends_at else "",
                          "fingerprint": self.fingerprint, "generatorURL": self.generator_url}}


def label_matches(wanted: str | None, value: str | None) -> bool:
    if wanted is None or wanted == "":
        return not value
    if value is None:
        return False
    if wanted.startswith("~"):
        return re.fullmatch(wanted[1:], value) is not None
    return value == wanted


def matches(playbook: Playbook, alert: AlertInfo) -> bool:
    if playbook.on != "any" and playbook.on != alert.status:
        return False
    return all(label_matches(wanted, alert.labels.get(label)) for label, wanted in playbook.match.items())


def matching(playbooks: Iterable[Playbook], alert: AlertInfo) -> list[Playbook]:
    return [p for p in playbooks if matches(p, alert)]
