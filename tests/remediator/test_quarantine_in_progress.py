"""Quarantine of broken backups never touches a file a process is still writing."""

from __future__ import annotations

import os
import time

from tests.remediator.kit import Site, execute
from tests.services import writer


async def test_quarantine_skips_a_broken_looking_backup_whose_writer_is_paused(site: Site) -> None:
    root, quarantine = site.tmp / "backups", site.tmp / "quarantine"
    root.mkdir()
    dead = root / "backup-1.zip"
    dead.write_bytes(b"PK\x03\x04 truncated")  # its writer died: finished, and broken
    paused = root / "backup-2.zip"
    setup = site.setup(
        "name: t\nmatch: {alertname: TaskmedicBackupInvalid}\nsteps:\n  - name: quarantine\n"
        f"    files: {{root: {root}, pattern: '*.zip', invalid_only: true, older_than: 5m, "
        f"action: quarantine, quarantine_dir: {quarantine}}}\n")
    with writer(paused, b"PK\x03\x04 first chunk"):
        old = time.time() - 3600  # both quiet for an hour, longer than older_than
        for path in (dead, paused):
            os.utime(path, (old, old))
        report = await execute(setup)
        assert report.outcome == "succeeded", report
        assert os.listdir(root) == ["backup-2.zip"]
        [moved] = os.listdir(quarantine)
        assert moved.startswith("backup-1.zip.")
