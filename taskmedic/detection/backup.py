"""`targets: backup`: the finished files of the configured backup set named by the alert's
`backup` label that fail the validity check now (the same check the exporter reports)."""

from __future__ import annotations

import asyncio
import glob
import os
import stat
import time
from collections.abc import Mapping

from taskmedic.archive import check_file
from taskmedic.config.model import Backup
from taskmedic.connections import Connections
from taskmedic.detection.base import Inventory, Row, Targets, selected


def invalid_files(backup: Backup, now: float) -> list[Row]:
    """Regular, finished files (not modified within `in_progress`) that fail the check, oldest first."""
    rows: list[Row] = []
    for path in glob.glob(os.path.join(glob.escape(backup.path), backup.pattern)):
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < backup.in_progress:
                continue
            ok, why = check_file(path)
        except FileNotFoundError:
            continue  # rotated or quarantined while we looked
        if not ok:
            rows.append({"id": os.path.basename(path), "path": path, "reason": why,
                         "size": st.st_size, "mtime": st.st_mtime})
    return sorted(rows, key=lambda r: r["mtime"])


class BackupKind:
    name = "backup"
    verifiable = True

    async def find(self, labels: Mapping[str, str], inventory: Inventory, connections: Connections,
                   limit: int) -> Targets:
        name = selected(labels, "backup", list(inventory.backups), "backup set (backups:)")
        rows = await asyncio.to_thread(invalid_files, inventory.backups[name], time.time())
        return Targets(self.name, name, None, rows[:limit], len(rows) > limit)
