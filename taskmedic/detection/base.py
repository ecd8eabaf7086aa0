"""What a target kind is: given the alert's labels (which only *select*), the rows that the
configured rule finds now. A kind is one module here and one line in `TARGET_KINDS`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from taskmedic.config.model import Backup, Disk, System
from taskmedic.connections import Connections

Row = dict[str, Any]


class TargetsRefused(Exception):
    """The labels name nothing configured, or the rule cannot be judged from here: do nothing."""


class JudgementUnknown(Exception):
    """The evidence a rule needs is missing (no worker answered, rows dated in the future): the
    rule judges nothing stuck, the exporter says so (`taskmedic_judgement_trusted` 0) and the
    remediator refuses to act."""


@dataclass(frozen=True)
class Inventory:
    """The configuration sections targets are looked up in: the same ones the exporter watches."""

    systems: Mapping[str, System] = field(default_factory=dict)
    disks: Sequence[Disk] = ()
    backups: Mapping[str, Backup] = field(default_factory=dict)


@dataclass(frozen=True)
class Targets:
    kind: str
    subject: str  # what was re-checked: "cape/pending_too_long", a disk path, a backup set
    system: str | None  # the system the rows belong to (steps acting elsewhere are refused)
    rows: list[Row]
    truncated: bool = False  # more rows matched than were fetched

    @property
    def ids(self) -> list[Any]:
        return [r["id"] for r in self.rows]


class TargetKind(Protocol):
    name: str
    verifiable: bool  # `verify: targets` means something for this kind

    async def find(self, labels: Mapping[str, str], inventory: Inventory, connections: Connections,
                   limit: int) -> Targets:
        """The rows the rule selected by `labels` finds now, at most `limit` (then `truncated`)."""
        ...


def selected(labels: Mapping[str, str], name: str, configured: Sequence[str], what: str) -> str:
    """The configured name a label selects, exactly; anything else is refused."""
    value = labels.get(name)
    if value is None or value == "":
        raise TargetsRefused(f"the alert has no `{name}` label to select a {what}")
    if value not in configured:
        raise TargetsRefused(f"the alert's {name} {value[:100]!r} is not a configured {what}")
    return value
