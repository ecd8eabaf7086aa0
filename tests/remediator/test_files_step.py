"""The `files` step on a real directory tree: CAPE's analyses folders, oldest first, inside the root only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exporter.collectors.disk import DiskCollector
from taskmedic.config.model import Disk
from tests.remediator.kit import Site, execute, seed_cape, trusting_labels


def book(files: str, before: str = "") -> str:
    return trusting_labels("name: t\nmatch: {alertname: TaskmedicStuckTasks}\nsteps:\n" + before
                           + f"  - name: free disk\n    files: {{{files}}}\n")


def analyses(root: Path, ids: range, age_days: float = 10) -> None:
    for n, task_id in enumerate(ids):
        folder = root / str(task_id)
        (folder / "reports").mkdir(parents=True)
        (folder / "reports" / "report.json").write_text("{}" * 100)
        when = os.path.getmtime(folder) - age_days * 86400 - (len(ids) - n) * 60  # lower id = older
        os.utime(folder, (when, when))


async def test_analyses_of_old_reported_tasks_are_removed_oldest_first(site: Site) -> None:
    seed_cape(site.cape, stale=0, fresh=0, reported=6)
    root = site.tmp / "storage" / "analyses"
    analyses(root, range(1, 7))
    analyses(root, range(100, 101), age_days=0)  # a folder with no finished task behind it
    query = ("  - name: old reported\n    sql: {system: cape, query: \"select id from tasks where status = 'reported'"
             " and completed_on < localtimestamp - interval '7 days' order by id\"}\n")
    setup = site.setup(book(f"root: {root}, ids_from: old reported, max_entries: 4", before=query))
    preview = await execute(setup, dry_run=True)
    assert (preview.outcome, preview.steps[1].rows) == ("dry_run", 4)
    assert len(os.listdir(root)) == 7
    report = await execute(setup)
    assert report.outcome == "succeeded"
    assert report.steps[1].detail["entries"] == ["1", "2", "3", "4"]
    assert sorted(os.listdir(root)) == ["100", "5", "6"]


async def test_a_free_ratio_already_met_removes_nothing(site: Site) -> None:
    root = site.tmp / "analyses"
    analyses(root, range(1, 4))
    report = await execute(site.setup(book(f"root: {root}, free_ratio: 0.000001")))
    assert (report.outcome, report.steps[0].rows) == ("succeeded", 0)
    assert len(os.listdir(root)) == 3


async def test_free_ratio_is_the_exporters_disk_free_ratio(site: Site) -> None:
    """The alert fires on taskmedic_disk_free_ratio; the step must stop at the same number
    (free / (free + used), root's reserve left out), not at f_bavail / f_blocks."""
    root = site.tmp / "analyses"
    analyses(root, range(1, 4))
    [metric] = [s for s in await DiskCollector(Disk(path=str(root))).collect()
                if s.name == "taskmedic_disk_free_ratio"]
    st = os.statvfs(root)
    naive = st.f_bavail / st.f_blocks  # what the step used to compare with
    preview = await execute(site.setup(book(f"root: {root}, free_ratio: 0.99")), dry_run=True)
    assert preview.steps[0].detail["free_ratio_after"] == pytest.approx(metric.value, abs=0.002)
    # Just under the exporter's ratio: the disk already counts as free enough, nothing goes
    # (with a root reserve, bavail / blocks is lower and would have removed every folder).
    threshold = round(metric.value - 0.01, 4)
    report = await execute(site.setup(book(f"root: {root}, free_ratio: {threshold}")))
    assert (report.outcome, report.steps[0].rows) == ("succeeded", 0), (metric.value, naive)
    assert len(os.listdir(root)) == 3


async def test_a_path_label_climbing_out_of_the_root_is_refused(site: Site) -> None:
    root = site.tmp / "backups"
    root.mkdir()
    victim = site.tmp / "precious.txt"
    victim.write_text("keep me")
    setup = site.setup(book(f'root: {root}, path: "{{{{ labels.file }}}}"'))
    for name in ("../precious.txt", "/etc/passwd", "a/../../precious.txt"):
        report = await execute(setup, {"file": name})
        assert report.outcome == "refused", name
        assert "outside the allowed root" in (report.error or "")
    assert victim.read_text() == "keep me"


async def test_symlinks_out_of_the_root_are_never_followed(site: Site) -> None:
    root = site.tmp / "analyses"
    analyses(root, range(1, 3))
    outside = site.tmp / "elsewhere"
    (outside / "data").mkdir(parents=True)
    (root / "3").symlink_to(outside)
    (root / "link-dir").symlink_to(outside)
    sweep = await execute(site.setup(book(f"root: {root}")))
    assert (sweep.outcome, sweep.steps[0].rows) == ("succeeded", 2)  # the two real folders; links skipped
    named = await execute(site.setup(book(f'root: {root}, path: "{{{{ labels.file }}}}"')), {"file": "3/data"})
    assert named.outcome == "refused"
    assert (outside / "data").is_dir()


async def test_a_broken_backup_is_quarantined(site: Site) -> None:
    root, quarantine = site.tmp / "backups", site.tmp / "quarantine"
    root.mkdir()
    (root / "backup-2026-11-22.zip").write_bytes(b"PK\x03\x04 truncated")
    setup = site.setup(book(f'root: {root}, action: quarantine, quarantine_dir: {quarantine}, '
                            f'path: "{{{{ labels.file }}}}"'))
    report = await execute(setup, {"file": "backup-2026-11-22.zip"})
    assert report.outcome == "succeeded"
    assert os.listdir(root) == []
    [moved] = os.listdir(quarantine)
    assert moved.startswith("backup-2026-11-22.zip.")
