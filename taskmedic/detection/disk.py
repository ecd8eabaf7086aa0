"""`targets: disk`: the configured disk whose path the alert's `path` label names exactly, with
its free space as measured now (statvfs, as the exporter's gauges)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from taskmedic.connections import Connections
from taskmedic.detection.base import Inventory, Row, Targets, selected
from taskmedic.disks import free_space


def disk_row(path: str) -> Row:
    st = os.statvfs(path)
    free, usable = free_space(st)
    return {"id": path, "path": path, "free_bytes": free, "free_ratio": free / usable if usable else 0.0}


class DiskKind:
    name = "disk"
    verifiable = False  # a disk is still there after a repair; the files step stops at its free_ratio

    async def find(self, labels: Mapping[str, str], inventory: Inventory, connections: Connections,
                   limit: int) -> Targets:
        path = selected(labels, "path", [d.path for d in inventory.disks], "disk (disks: path)")
        return Targets(self.name, path, None, [await asyncio.to_thread(disk_row, path)])
