"""BackupCollector: the newest file of a backup set: size, age, count and validity.

Files being written are not judged: the newest finished one is. A file the exporter cannot read
is judged invalid with the reason, so the set's collector stays up and TaskmedicBackupInvalid can
fire. What only reading a file through can tell (a gzip stream, a pg_dump archive's data blocks,
and with `verify_data` a zip's member CRCs) is read by a background thread under the set's I/O
budget, once per file version; until that read has finished the structural verdict stands.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from exporter.collectors.base import BlockingCalls
from exporter.config import ExporterConfig
from exporter.metrics import Sample, sample
from taskmedic.archive import (
    Stopped,
    Verdict,
    Version,
    VersionCache,
    check_file,
    check_stream,
    check_structure,
    file_version,
    sniff,
)
from taskmedic.backups import open_for_writing
from taskmedic.config.model import Backup
from taskmedic.connections import Connections

log = logging.getLogger("taskmedic.exporter")


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
    judged: str = ""  # the newest finished file, whose verdict `valid` is
    data_verified: bool = False  # it has been read through and that counts in `valid`
    versions: Mapping[str, Version] = field(default_factory=dict)  # what the next cycle compares with


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


def _is_zip(path: str) -> bool:
    with open(path, "rb") as f:
        return sniff(f.read(512)) == "zip"


class FullReads:
    """Reads a set's judged file through, in a daemon thread of its own, one file at a time under
    the set's I/O budget: a 6 GB backup takes minutes, far longer than a collection. Each
    collection asks for the verdict on the file version it judges and gets None until the read
    of that version is done; a read of a file no longer asked for is abandoned."""

    def __init__(self, bytes_per_second: float) -> None:
        self.rate = bytes_per_second
        self._done: VersionCache[Verdict] = VersionCache(16)
        self._wanted: tuple[str, Version] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def verdict(self, path: str, version: Version) -> Verdict | None:
        done = self._done.get(path, version)
        if done is not None:
            return done
        with self._lock:
            self._wanted = (path, version)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="taskmedic-backup-read", daemon=True)
                self._thread.start()
        self._wake.set()
        return None

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                job = self._wanted
            if job is not None and self._done.get(*job) is None:
                self._read(*job)

    def _read(self, path: str, version: Version) -> None:
        try:
            verdict = check_stream(path, self.rate, stop=lambda: self._wanted != (path, version))
            if file_version(os.stat(path)) != version:
                return  # changed while it was read: the next collection asks again
        except Stopped:
            return
        except OSError as e:
            verdict = (False, f"unreadable: {e.strerror or e}")
        self._done.put(path, version, verdict)


# One per backup set and budget, kept across configuration reloads: a reload builds new collectors,
# and their reads (a thread each, perhaps mid-way through a 6 GB file) carry on instead of piling up.
_reads_by_set: dict[tuple[str, str, int], FullReads] = {}
_reads_lock = threading.Lock()


def _reads_for(label: str, backup: Backup) -> FullReads:
    with _reads_lock:
        key = (label, backup.path, backup.verify_bytes_per_second)
        if key not in _reads_by_set:
            _reads_by_set[key] = FullReads(backup.verify_bytes_per_second)
        return _reads_by_set[key]


def _judge(path: str, version: Version, reads: FullReads | None, verify_data: bool) -> tuple[bool, str, bool]:
    """(valid, reason, read through) of the judged file. Without `reads` (an older file, looked
    at only to find the last valid one), a file that must be read through is read at once."""
    try:
        quick = check_structure(path)
        if quick is not None and not (quick[0] and verify_data and _is_zip(path)):
            return quick[0], quick[1], False
        if reads is None:
            return (*check_file(path), False) if quick is None else (*quick, False)
        read = reads.verdict(path, version)
    except OSError as e:  # permission denied, vanished, I/O error
        return False, f"unreadable: {e.strerror or e}", False
    if read is not None:
        return read[0], read[1], True
    if quick is not None:
        return quick[0], quick[1], False
    return True, "header intact; not yet read through", False


def inspect(backup: Backup, now: float, before: Mapping[str, Version],
            reads: FullReads | None = None) -> BackupState:
    """Blocking filesystem work; runs in a thread. `before` is the previous cycle's versions."""
    if not os.path.isdir(backup.path):
        raise FileNotFoundError(f"backup directory {backup.path} does not exist")
    stats = sorted(_files(backup), key=lambda sp: sp[0].st_mtime, reverse=True)
    if not stats:
        return BackupState(0, 0, 0, 0.0, False, False, "no backup files", 0.0)
    versions = {p: file_version(st) for st, p in stats}
    writing = open_for_writing(versions)

    def still_written(st: os.stat_result, path: str) -> bool:
        changed = path in before and before[path] != versions[path]
        return path in writing or changed or now - st.st_mtime < backup.in_progress

    finished = [(st, p) for st, p in stats if not still_written(st, p)]
    valid, reason, judged, verified, last_valid = False, "no finished backup yet", "", False, 0.0
    for i, (st, p) in enumerate(finished):
        ok, why, data_checked = _judge(p, versions[p], reads if i == 0 else None, backup.verify_data)
        if i == 0:
            valid, reason, judged, verified = ok, why, p, data_checked
        if ok:
            last_valid = st.st_mtime
            break
    previous = stats[1][0].st_size if len(stats) > 1 else 0
    return BackupState(len(stats), stats[0][0].st_size, previous, stats[0][0].st_mtime,
                       len(finished) < len(stats), valid, reason, last_valid, judged, verified, versions)


@dataclass
class BackupCollector:
    label: str
    backup: Backup
    _blocking: BlockingCalls = field(default_factory=BlockingCalls, init=False, repr=False)
    _reads: FullReads = field(init=False, repr=False)
    _before: Mapping[str, Version] = field(default_factory=dict, init=False, repr=False)
    _reported: tuple[str, str] = field(default=("", ""), init=False, repr=False)

    def __post_init__(self) -> None:
        self._reads = _reads_for(self.label, self.backup)

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
        state = await self._blocking.run(inspect, self.backup, time.time(), self._before, self._reads)
        self._before = state.versions
        self._log_verdict(state)
        b = self.label
        return [
            sample("taskmedic_backup_files", state.files, backup=b),
            sample("taskmedic_backup_size_bytes", state.newest_size, backup=b),
            sample("taskmedic_backup_previous_size_bytes", state.previous_size, backup=b),
            sample("taskmedic_backup_last_modified_timestamp_seconds", state.newest_mtime, backup=b),
            sample("taskmedic_backup_last_valid_timestamp_seconds", state.last_valid_mtime, backup=b),
            sample("taskmedic_backup_valid", 1 if state.valid else 0, backup=b),
            sample("taskmedic_backup_in_progress", 1 if state.in_progress else 0, backup=b),
            sample("taskmedic_backup_data_verified", 1 if state.data_verified else 0, backup=b),
        ]

    def _log_verdict(self, state: BackupState) -> None:
        """Once per change of the judged file's verdict, so an operator can read why it is invalid."""
        if (state.judged, state.reason) == self._reported:
            return
        self._reported = (state.judged, state.reason)
        if state.judged and not state.valid:
            log.warning("backup %s: %s is invalid: %s", self.label, state.judged, state.reason)
        elif state.judged:
            log.info("backup %s: %s: %s", self.label, state.judged, state.reason)


def build(config: ExporterConfig, connections: Connections) -> list[BackupCollector]:
    return [BackupCollector(name, b) for name, b in config.backups.items()]
