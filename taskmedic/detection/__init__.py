"""Detection rules, in one place for both processes: the exporter counts what they find, the
remediator acts on exactly those rows (`targets:`) and verifies with them. A new kind of
target is one module here and one line in `TARGET_KINDS`."""

from __future__ import annotations

from taskmedic.detection.backup import BackupKind
from taskmedic.detection.base import Inventory, Row, TargetKind, Targets, TargetsRefused
from taskmedic.detection.disk import DiskKind
from taskmedic.detection.stuck import StuckKind, stuck_targets

TARGET_KINDS: dict[str, TargetKind] = {kind.name: kind for kind in (StuckKind(), DiskKind(), BackupKind())}

__all__ = ["TARGET_KINDS", "Inventory", "Row", "TargetKind", "Targets", "TargetsRefused", "stuck_targets"]
