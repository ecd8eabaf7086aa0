"""The exporter's metric catalog: every family it can expose, with its type and HELP text.

Collectors return `Sample`s; the snapshot groups them into the families declared here, so a
name, its labels and its HELP text are written once.
"""

from __future__ import annotations

from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Labels
    value: float


def sample(name: str, value: float, **labels: str) -> Sample:
    return Sample(name, tuple(labels.items()), float(value))


@dataclass(frozen=True)
class Family:
    name: str
    help: str
    labels: tuple[str, ...]


_SYSTEM = "Refreshed every systems.<name>.interval (15s by default)."
_DISK = "Refreshed every disks[].interval (30s by default)."
_BACKUP = "Refreshed every backups.<name>.interval (60s by default)."
_SELF = "Updated after every run of the collector."

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("taskmedic_tasks", f"Tasks per status. {_SYSTEM} Terminal statuses every "
           "tasks.history_interval (5m by default).", ("system", "status")),
    Family("taskmedic_stuck_tasks", f"Tasks judged stuck, per status and reason. {_SYSTEM}",
           ("system", "status", "reason")),
    Family("taskmedic_judgement_trusted", "1 when the system's stuck rules could be judged from their "
           "evidence; 0 when not (no Celery worker answered, live rows dated in the future): its stuck "
           f"counts then read 0 and the remediator refuses to act on it. {_SYSTEM}", ("system",)),
    Family("taskmedic_clock_skew_seconds", "How far in the future the newest live task is dated, by the "
           f"database's clock (0 when none is): timestamps read in the wrong zone. {_SYSTEM}", ("system",)),
    Family("taskmedic_task_oldest_age_seconds", "Age of the oldest task in a live status, by the "
           f"database's clock (0 when none). {_SYSTEM}", ("system", "status")),
    Family("taskmedic_queue_depth", f"Messages waiting in a queue, priority sub-queues included. {_SYSTEM}",
           ("system", "queue")),
    Family("taskmedic_queue_unacked", f"Messages delivered to a worker and not yet acknowledged. {_SYSTEM}",
           ("system", "queue")),
    Family("taskmedic_queue_oldest_age_seconds", "Age of the oldest waiting message, by Redis' clock "
           f"(0 when empty; only for queues whose messages carry an enqueue time). {_SYSTEM}",
           ("system", "queue")),
    Family("taskmedic_disk_free_ratio", f"Free space available to unprivileged users, 0-1. {_DISK}",
           ("path",)),
    Family("taskmedic_disk_free_bytes", f"Free bytes available to unprivileged users. {_DISK}", ("path",)),
    Family("taskmedic_disk_size_bytes", f"Size of the filesystem in bytes. {_DISK}", ("path",)),
    Family("taskmedic_disk_inodes_free_ratio", f"Free inodes, 0-1 (1 where the filesystem has no "
           f"inode limit). {_DISK}", ("path",)),
    Family("taskmedic_backup_size_bytes", f"Size of the newest backup file. {_BACKUP}", ("backup",)),
    Family("taskmedic_backup_previous_size_bytes", f"Size of the second-newest backup file. {_BACKUP}",
           ("backup",)),
    Family("taskmedic_backup_last_modified_timestamp_seconds", f"Modification time of the newest backup "
           f"file. {_BACKUP}", ("backup",)),
    Family("taskmedic_backup_last_valid_timestamp_seconds", f"Modification time of the newest backup file "
           f"that checked valid (0 when none). {_BACKUP}", ("backup",)),
    Family("taskmedic_backup_valid", "1 when the newest finished backup file is complete (zip central "
           "directory and, with verify_data, member CRCs; gzip stream; tar end; pg_dump TOC and data blocks; "
           f"plain dump completion line), 0 when not or unreadable. {_BACKUP}", ("backup",)),
    Family("taskmedic_backup_in_progress", "1 while a backup file is being written (open for writing by a "
           f"process, or modified recently or since the last check). {_BACKUP}", ("backup",)),
    Family("taskmedic_backup_data_verified", "1 when the newest finished file has been read through (gzip "
           "stream, pg_dump data blocks, zip member CRCs with verify_data) and that counts in "
           f"taskmedic_backup_valid; 0 until then. {_BACKUP}", ("backup",)),
    Family("taskmedic_backup_files", f"Number of files matching the backup pattern. {_BACKUP}", ("backup",)),
    Family("taskmedic_collector_up", f"1 when the collector's last run succeeded. {_SELF}", ("collector",)),
    Family("taskmedic_collector_duration_seconds", f"Duration of the collector's last run. {_SELF}",
           ("collector",)),
    Family("taskmedic_collector_last_success_timestamp_seconds", "Unix time of the collector's last "
           f"successful run (0 before the first). {_SELF}", ("collector",)),
)}
