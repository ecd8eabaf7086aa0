"""Which playbooks an alert triggers: label matchers plus the alert's firing/resolved state.

A matcher value is an exact string, `~regex` (fully anchored, as in Alertmanager's `=~`), or
null / "" for a label that must be absent (Prometheus treats an empty label as no label).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from remediator.alert import AlertInfo
from remediator.config import Playbook


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
