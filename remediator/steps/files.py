"""`files` step: remove or quarantine entries directly under one allowed root.

Candidates are the root's immediate entries (CAPE: `analyses/<task id>`), optionally only those
named by the ids a preceding `sql` query step returned, or one templated `path`. Every candidate
is resolved with realpath and must stay inside the root; symlinks are never followed (a link is
skipped, and directory trees are removed with `shutil.rmtree`, which uses `openat` on Linux and
does not follow links inside the tree). Oldest first, until the filesystem is `free_ratio` free
or `max_entries` were handled.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import shutil
import stat
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from remediator.steps.base import Refused, RunContext, StepFailed, StepResult, StepType, first_value
from remediator.templating import Template
from taskmedic.archive import check_file
from taskmedic.backups import in_progress
from taskmedic.config.model import Duration, Model
from taskmedic.disks import free_space


class FilesSpec(Model):
    root: str  # the only directory this step may touch; never templated
    action: Literal["remove", "quarantine"] = "remove"
    quarantine_dir: str | None = None
    path: Template | None = None  # one entry (relative to root), e.g. the file an alert names
    ids_from: str | None = None  # the name of a preceding sql `query` step: only entries named by its ids
    pattern: str = "*"  # a glob over the root's entries (when neither path nor ids_from is set)
    invalid_only: bool = False  # only backup files that fail the exporter's validity check (S4)
    older_than: Duration = 0.0  # by modification time
    free_ratio: float | None = Field(default=None, gt=0, lt=1)  # stop once this much is free
    max_entries: int = Field(default=100, gt=0)

    @model_validator(mode="after")
    def _shape(self) -> FilesSpec:
        if not os.path.isabs(self.root) or os.path.realpath(self.root) == "/":
            raise ValueError("root must be an absolute directory other than /")
        if (self.action == "quarantine") != (self.quarantine_dir is not None):
            raise ValueError("quarantine_dir is required with action: quarantine (and only then)")
        if self.path is not None and self.ids_from is not None:
            raise ValueError("set `path` or `ids_from`, not both")
        return self


@dataclass(frozen=True)
class Entry:
    path: str
    mtime: float
    size: int


def _size(path: str, st: os.stat_result) -> int:
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):  # os.walk does not follow symlinks by default
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def _inside(root: str, name: str) -> str:
    """The path of `name` under `root`, refused if it escapes the root (by `..` or through a
    symlinked directory) or is itself a symlink."""
    if not name or "\x00" in name:
        raise Refused(f"not a usable file name: {name!r}")
    candidate = os.path.normpath(os.path.join(root, name))
    parent = os.path.realpath(os.path.dirname(candidate))
    if candidate == root or os.path.commonpath([root, candidate]) != root or \
            os.path.commonpath([root, parent]) != root:
        raise Refused(f"{name!r} is outside the allowed root {root!r}")
    path = os.path.join(parent, os.path.basename(candidate))
    if os.path.islink(path):
        raise Refused(f"{name!r} is a symlink; links are never followed")
    return path


def _entry(path: str) -> Entry | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return None
    return Entry(path, st.st_mtime, _size(path, st))


def _candidates(spec: FilesSpec, root: str, ctx: RunContext) -> list[Entry]:
    if spec.path is not None:
        names = [ctx.render(spec.path)]
    elif spec.ids_from is not None:
        ids = (first_value(row) for row in ctx.outputs.get(spec.ids_from, []))
        names = [str(i) for i in ids if i is not None]
    else:
        names = sorted(n for n in os.listdir(root)
                       if fnmatch.fnmatchcase(n, spec.pattern) and not os.path.islink(os.path.join(root, n)))
    entries = [_entry(_inside(root, name)) for name in names]
    cutoff = time.time() - spec.older_than
    chosen = [e for e in entries if e is not None and e.mtime <= cutoff]
    if spec.invalid_only:  # a file still being written is never judged, nor touched
        chosen = [e for e in chosen if os.path.isfile(e.path) and not in_progress(e.path, spec.older_than)
                  and not check_file(e.path)[0]]
    return sorted(chosen, key=lambda e: e.mtime)


def _free(root: str) -> tuple[int, int]:
    """(free, usable) bytes: the exporter's taskmedic_disk_free_ratio is free / usable, and the
    alert that triggers this step is on that ratio, so `free_ratio` means the same thing here."""
    return free_space(os.statvfs(root))


def _act(entry: Entry, spec: FilesSpec) -> None:
    if spec.action == "quarantine":
        assert spec.quarantine_dir is not None
        os.makedirs(spec.quarantine_dir, exist_ok=True)
        target = os.path.join(spec.quarantine_dir, f"{os.path.basename(entry.path)}.{int(time.time())}")
        shutil.move(entry.path, target)
    elif os.path.isdir(entry.path):
        shutil.rmtree(entry.path)
    else:
        os.unlink(entry.path)


def _apply(spec: FilesSpec, ctx: RunContext) -> StepResult:
    root = os.path.realpath(spec.root)
    if not os.path.isdir(root):
        raise StepFailed(f"root {spec.root!r} is not a directory")
    free, usable = _free(root)
    handled: list[Entry] = []
    for entry in _candidates(spec, root, ctx):
        enough_free = spec.free_ratio is not None and usable > 0 and free / usable >= spec.free_ratio
        if enough_free or len(handled) >= spec.max_entries:
            break
        if not ctx.dry_run:
            _act(entry, spec)
        handled.append(entry)
        # In a dry run the filesystem does not change, so the freed space is estimated from sizes
        # (what is freed moves from used to free: `usable` stays the same).
        free = free + entry.size if ctx.dry_run else _free(root)[0]
    freed = sum(e.size for e in handled)
    detail: dict[str, Any] = {"root": root, "action": spec.action, "bytes": freed,
                              "entries": [os.path.basename(e.path) for e in handled[:50]],
                              "free_ratio_after": round(free / usable, 4) if usable else None}
    return StepResult(rows=len(handled), detail=detail)


class FilesStep(StepType[FilesSpec]):
    key: ClassVar[str] = "files"
    spec: ClassVar[type[Model]] = FilesSpec

    async def run(self, spec: FilesSpec, ctx: RunContext) -> StepResult:
        try:
            return await asyncio.to_thread(_apply, spec, ctx)
        except OSError as e:
            raise StepFailed(f"{type(e).__name__}: {e}") from None
