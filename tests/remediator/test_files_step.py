"""The `files` step on a real directory tree: CAPE's analyses folders, oldest first, inside the root only."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from exporter.collectors.disk import DiskCollector
from remediator.steps import files
from taskmedic.config.model import Disk
from tests.polling import await_until
from tests.remediator.kit import (
    Site,
    StartApp,
    alert,
    execute,
    fetch,
    payload,
    post,
    seed_cape,
    settled,
    trusting_labels,
)


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
    assert (report.outcome, report.steps[0].rows) == ("skipped", 0)
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
    assert (report.outcome, report.steps[0].rows) == ("skipped", 0), (metric.value, naive)
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
        assert "is not a direct entry of the allowed root" in (report.error or "")
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


def names_from_rows(*names: str) -> str:
    """A query step whose rows name entries (as a task system's ids would)."""
    values = ", ".join("'" + n.replace("'", "''") + "'" for n in names)
    return f'  - name: rows\n    sql: {{system: cape, query: "select unnest(array[{values}]) as name"}}\n'


async def test_nested_and_trailing_slash_names_are_refused_and_nothing_is_touched(site: Site) -> None:
    root = site.tmp / "root"
    (root / "dir2" / "nested").mkdir(parents=True)
    (root / "dir2" / "nested" / "f").write_text("x")
    (root / "a.txt").write_text("a")
    for name in ("dir2/nested", "a.txt/", "./a.txt", ".", "..", "", "dir2/", "/etc"):
        setup = site.setup(book(f"root: {root}, ids_from: rows", before=names_from_rows(name)))
        for dry_run in (True, False):
            report = await execute(setup, dry_run=dry_run)
            assert report.outcome == "refused", name
            assert report.error == (f"step 'free disk': {name!r} is not a direct entry of the allowed root "
                                    f"'{root}' (a name without '/', not '.' or '..'); refused")
    assert (root / "dir2" / "nested" / "f").read_text() == "x"
    assert (root / "a.txt").read_text() == "a"


async def test_a_root_swapped_for_a_symlink_mid_run_changes_nothing_outside_it(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the check of the entries and the removal of the second one, the root is renamed
    and a symlink to another directory with entries of the same names put in its place: the
    step keeps acting on the directory it checked, never on the link's target."""
    base = site.tmp / "storage"
    root, moved, outside = base / "analyses", base / "analyses.old", site.tmp / "precious"
    analyses(root, range(1, 4))
    analyses(outside, range(1, 4))
    act = files._act

    def swap_then_act(*args: Any) -> None:
        if not moved.exists():
            root.rename(moved)
            root.symlink_to(outside)
        act(*args)

    monkeypatch.setattr(files, "_act", swap_then_act)
    report = await execute(site.setup(book(f"root: {root}")))
    assert (report.outcome, report.steps[0].detail["entries"]) == ("succeeded", ["1", "2", "3"])
    assert os.listdir(moved) == []
    assert sorted(os.listdir(outside)) == ["1", "2", "3"]
    assert all((outside / str(n) / "reports" / "report.json").exists() for n in range(1, 4))


async def test_an_entry_swapped_for_a_symlink_after_its_check_is_refused(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    root, outside = site.tmp / "analyses", site.tmp / "precious"
    analyses(root, range(1, 4))
    analyses(outside, range(1, 2))
    act = files._act

    def swap_then_act(root_fd: int, entry: files.Entry, quarantine_fd: int | None) -> None:
        if entry.name == "2":
            shutil.rmtree(root / "2")
            (root / "2").symlink_to(outside / "1")
        act(root_fd, entry, quarantine_fd)

    monkeypatch.setattr(files, "_act", swap_then_act)
    report = await execute(site.setup(book(f"root: {root}")))
    assert report.outcome == "refused"
    assert report.error == ("step 'free disk': '2' changed between its check and the act (removed, or swapped "
                            "for a link or another file); stopped")
    assert report.steps[0].detail["entries"] == ["1"]  # done before it stopped
    assert sorted(os.listdir(root)) == ["2", "3"]
    assert (outside / "1" / "reports" / "report.json").exists()


def many_folders(root: Path, folders: int, files_each: int) -> None:
    for n in range(folders):
        folder = root / f"{n:03d}"
        folder.mkdir(parents=True)
        for i in range(files_each):
            os.close(os.open(folder / str(i), os.O_CREAT | os.O_WRONLY, 0o600))
        when = time.time() - 86400 + n  # oldest first: 000, 001, ...
        os.utime(folder, (when, when))


async def start_slow_sweep(site: Site, start: StartApp, monkeypatch: pytest.MonkeyPatch, *, folders: int,
                           files_each: int, delay: float, timeout: str) -> Path:
    """A running sweep of a root of old folders on a slow disk (each removal takes `delay` more
    than it does here): the app started and the alert posted; returns the root."""
    root = site.tmp / "analyses"
    many_folders(root, folders, files_each)
    act = files._act

    def slow_disk(*args: Any) -> None:
        act(*args)
        time.sleep(delay)

    monkeypatch.setattr(files, "_act", slow_disk)
    playbook = (f"name: sweep\nmatch: {{alertname: TaskmedicStuckTasks}}\ntimeout: {timeout}\nsteps:\n"
                f"  - name: free disk\n    files: {{root: {root}, max_entries: 1000}}\n")
    client = await start(site.setup(playbook))
    assert (await post(client, payload(alert())))[0] == 200
    return root


async def test_a_run_timeout_stops_removal_within_one_folder_and_the_journal_lists_what_was_removed(
        site: Site, start: StartApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep of 40 folders on a slow disk (each removal takes 50 ms more than it does here)
    under `timeout: 1s`: the run fails, removal stops with it, and the journal lists exactly the
    folders that are gone."""
    root = await start_slow_sweep(site, start, monkeypatch, folders=40, files_each=50, delay=0.05, timeout="1s")
    [run] = await settled(site, timeout=60)
    after_run = sorted(os.listdir(root))
    await asyncio.sleep(1.0)
    assert sorted(os.listdir(root)) == after_run  # nothing carried on once the run had ended
    assert (run["outcome"], run["error"]) == ("failed", "timed out after 1s; its SQL was rolled back")
    [step] = run["steps"]
    assert (step["name"], step["outcome"]) == ("free disk", "interrupted")
    removed = step["detail"]["entries"]
    assert 0 < len(removed) < 40
    assert sorted(removed + after_run) == [f"{n:03d}" for n in range(40)]  # exactly what is gone
    assert all(len(os.listdir(root / name)) == 50 for name in after_run)  # the rest untouched


async def test_the_journal_lists_removed_entries_while_the_run_is_still_going(
        site: Site, start: StartApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a files step removed is in the journal within a lease renewal, before the run ends: a
    replica killed mid-sweep leaves the record of what it already removed (an interrupted run
    keeps its steps)."""
    root = await start_slow_sweep(site, start, monkeypatch, folders=60, files_each=20, delay=0.1, timeout="60s")

    async def recorded_while_running() -> list[str] | None:
        rows = await fetch(site.journal.dsn, "select status, steps from taskmedic_runs")
        if not rows or rows[0]["status"] != "running":
            return None
        steps = json.loads(rows[0]["steps"])
        return list(steps[0]["detail"].get("entries", [])) if steps else None

    recorded = await await_until(recorded_while_running, 30, "removed entries journaled mid-run")
    assert recorded, "entries are journaled while the run still runs"
    assert not any((root / name).exists() for name in recorded), "what the journal lists is gone"
    [run] = await settled(site, timeout=60)
    assert run["outcome"] == "succeeded" and len(run["steps"][0]["detail"]["entries"]) == 60
