"""BackupCollector: the newest file of a backup set: size, age, count and validity."""

from __future__ import annotations

import glob
import os
import stat
import time
from dataclasses import dataclass, field

from exporter.collectors.base import BlockingCalls
from exporter.config import ExporterConfig
from exporter.metrics import Sample, sample
from taskmedic.archive import check_file
from taskmedic.config.model import Backup
from taskmedic.connections import Connections


@dataclass(frozen=True)
class BackupState:
    files: int
    newest_size: int
    previous_size: int
    newest_mtime: float
    in_progress: bool
    valid: bool
    reason: str
    last_valid_mtime: float


def _files(backup: Backup) -> list[tuple[os.stat_result, str]]:
    """Regular files matching the pattern (no symlinks); one deleted while listing is skipped."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(backup.path), backup.pattern)):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.append((st, path))
    return found


def inspect(backup: Backup, now: float) -> BackupState:
    """Blocking filesystem work; runs in a thread."""
    if not os.path.isdir(backup.path):
        raise FileNotFoundError(f"backup directory {backup.path} does not exist")
    stats = sorted(_files(backup), key=lambda sp: sp[0].st_mtime, reverse=True)
    if not stats:
        return BackupState(0, 0, 0, 0.0, False, False, "no backup files", 0.0)
    newest = stats[0][0]
    in_progress = now - newest.st_mtime < backup.in_progress
    # A file still being written is not judged: the finished one before it is.
    finished = [(st, p) for st, p in stats if now - st.st_mtime >= backup.in_progress]
    valid, reason, last_valid = False, "no finished backup yet", 0.0
    for i, (st, p) in enumerate(finished):
        try:
            ok, why = check_file(p)
        except FileNotFoundError:
            continue  # rotated or quarantined while we looked
        if i == 0:
            valid, reason = ok, why
        if ok:
            last_valid = st.st_mtime
            break
    previous = stats[1][0].st_size if len(stats) > 1 else 0
    return BackupState(len(stats), newest.st_size, previous, newest.st_mtime, in_progress,
                       valid, reason, last_valid)


@dataclass
class BackupCollector:
    label: str
    backup: Backup
    _blocking: BlockingCalls = field(default_factory=BlockingCalls, init=False, repr=False)

    @property
    def name(self) -> str:
        return f"backups:{self.label}"

    @property
    def subject(self) -> tuple[str, str]:
        return "backup", self.label

    @property
    def interval(self) -> float:
        return self.backup.interval

    @property
    def timeout(self) -> float:
        return self.backup.timeout

    async def collect(self) -> list[Sample]:
        state = await self._blocking.run(inspect, self.backup, time.time())
        b = self.label
        return [
            sample("taskmedic_backup_files", state.files, backup=b),
            sample("taskmedic_backup_size_bytes", state.newest_size, backup=b),
            sample("taskmedic_backup_previous_size_bytes", state.previous_size, backup=b),
            sample("taskmedic_backup_last_modified_timestamp_seconds", state.newest_mtime, backup=b),
            sample("taskmedic_backup_last_valid_timestamp_seconds", state.last_valid_mtime, backup=b),
            sample("taskmedic_backup_valid", 1 if state.valid else 0, backup=b),
            sample("taskmedic_backup_in_progress", 1 if state.in_progress else 0, backup=b),
        ]


def build(config: ExporterConfig, connections: Connections) -> list[BackupCollector]:
    return [BackupCollector(name, b) for name, b in config.backups.items()]
