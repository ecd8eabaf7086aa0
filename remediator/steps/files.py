"""`files` step: remove or quarantine direct entries of one allowed root.

Candidates are the root's immediate entries (CAPE: `analyses/<task id>`), optionally only those
named by the ids a preceding `sql` query step returned, or one templated `path`. A name is a
direct entry or nothing: one with a `/` (nested `a/b`, a trailing `a.txt/`, an absolute path),
a NUL, or that is empty, `.` or `..` is refused. Everything is done through a descriptor of the
root opened once (`O_DIRECTORY | O_NOFOLLOW`) and `dir_fd=` calls that never follow a symlink:
a link among the entries is skipped (refused when named), a tree is removed by fd-based walking
(`shutil.rmtree(dir_fd=)`, which does not follow links inside it), and an entry that changed
between its check and the act (swapped for a link or another file) stops the step as refused.
So a directory swapped for a symlink mid-run changes nothing outside the root.

Entries go oldest first, until the filesystem is `free_ratio` free or `max_entries` were
handled. The step can be cancelled (run timeout, shutdown) between entries: it stops within one
entry, and every entry handled is in the step's detail as it goes (`entries`), so an
interrupted run still says exactly what was removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from remediator.steps.base import (
    Refused,
    RunContext,
    StepFailed,
    StepResult,
    StepSpec,
    StepStopped,
    StepType,
    first_value,
)
from remediator.steps.sql import SqlSpec
from remediator.templating import Template
from taskmedic.archive import check_file
from taskmedic.backups import in_progress
from taskmedic.config.model import Duration
from taskmedic.disks import free_space

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class FilesSpec(StepSpec):
    root: str  # the only directory this step may touch; never templated
    action: Literal["remove", "quarantine"] = "remove"
    quarantine_dir: str | None = None
    path: Template | None = None  # one direct entry of root, e.g. the file an alert names
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

    def reads_rows_of(self) -> dict[str, str]:
        return {} if self.ids_from is None else {"ids_from": self.ids_from}

    def sources_problem(self, for_each: str | None, earlier: Mapping[str, StepSpec]) -> str | None:
        source = earlier.get(self.ids_from) if self.ids_from is not None else None
        if self.ids_from is not None and not (isinstance(source, SqlSpec) and source.query is not None):
            return "ids_from must name an earlier sql step with a `query`"
        return None


@dataclass(frozen=True)
class Entry:
    name: str  # a direct entry of the root
    st: os.stat_result  # as checked (never following a link); the act requires the same file

    @property
    def identity(self) -> tuple[int, int]:
        return self.st.st_dev, self.st.st_ino


def _direct_name(name: str, root: str) -> str:
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise Refused(f"{name[:200]!r} is not a direct entry of the allowed root {root!r} "
                      "(a name without '/', not '.' or '..'); refused")
    return name


@contextlib.contextmanager
def _opened(path: str) -> Iterator[int]:
    """A descriptor of a directory; its last component must not be a symlink."""
    fd = os.open(path, _DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _tree_size(dir_fd: int, name: str) -> int:
    total = 0
    for _path, _dirs, files, fd in os.fwalk(name, dir_fd=dir_fd, follow_symlinks=False):
        for file in files:
            with contextlib.suppress(OSError):
                total += os.stat(file, dir_fd=fd, follow_symlinks=False).st_size
    return total


def _entry(dir_fd: int, name: str, named: bool) -> Entry | None:
    """The entry as it is now; None if absent, or a link that a listing came across."""
    st = _lstat(dir_fd, name)
    if st is None:
        return None
    if stat.S_ISLNK(st.st_mode):
        if named:
            raise Refused(f"{name!r} is a symlink; links are never followed")
        return None
    return Entry(name, st)


def _size(dir_fd: int, entry: Entry) -> int:
    return _tree_size(dir_fd, entry.name) if stat.S_ISDIR(entry.st.st_mode) else entry.st.st_size


def _candidates(spec: FilesSpec, root: str, root_fd: int, ctx: RunContext) -> list[Entry]:
    if spec.path is not None:
        names, named = [ctx.render(spec.path)], True
    elif spec.ids_from is not None:
        ids = (first_value(row) for row in ctx.outputs.get(spec.ids_from, []))
        names, named = [str(i) for i in ids if i is not None], True
    else:
        names, named = sorted(n for n in os.listdir(root_fd) if fnmatch.fnmatchcase(n, spec.pattern)), False
    entries = [_entry(root_fd, _direct_name(name, root), named) for name in names]
    cutoff = time.time() - spec.older_than
    chosen = [e for e in entries if e is not None and e.st.st_mtime <= cutoff]
    if spec.invalid_only:
        # A file still being written is never judged, nor touched. The archive checks read by
        # path (read-only); the act below requires the same inode as checked here.
        chosen = [e for e in chosen if stat.S_ISREG(e.st.st_mode)
                  and not in_progress(os.path.join(root, e.name), spec.older_than)
                  and not check_file(os.path.join(root, e.name))[0]]
    return sorted(chosen, key=lambda e: e.st.st_mtime)


def _free(root_fd: int) -> tuple[int, int]:
    """(free, usable) bytes: the exporter's taskmedic_disk_free_ratio is free / usable, and the
    alert that triggers this step is on that ratio, so `free_ratio` means the same thing here."""
    return free_space(os.statvfs(root_fd))


def _still(root_fd: int, entry: Entry) -> None:
    now = _lstat(root_fd, entry.name)
    if now is None or stat.S_ISLNK(now.st_mode) or (now.st_dev, now.st_ino) != entry.identity:
        raise Refused(f"{entry.name!r} changed between its check and the act (removed, or swapped for a link "
                      "or another file); stopped")


def _quarantine(root_fd: int, entry: Entry, quarantine_fd: int) -> None:
    target = f"{entry.name}.{int(time.time())}"
    try:
        os.rename(entry.name, target, src_dir_fd=root_fd, dst_dir_fd=quarantine_fd)
        return
    except OSError as e:
        if e.errno != errno.EXDEV or not stat.S_ISREG(entry.st.st_mode):
            raise
    # Another filesystem: copy the very file checked (opened without following links), then unlink it.
    src = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
    with open(src, "rb") as source:
        if (os.fstat(source.fileno()).st_dev, os.fstat(source.fileno()).st_ino) != entry.identity:
            raise Refused(f"{entry.name!r} changed between its check and the act; stopped")
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=quarantine_fd)
        with open(dst, "wb") as copy:
            shutil.copyfileobj(source, copy)
    os.unlink(entry.name, dir_fd=root_fd)


def _act(root_fd: int, entry: Entry, quarantine_fd: int | None) -> None:
    _still(root_fd, entry)
    if quarantine_fd is not None:
        _quarantine(root_fd, entry, quarantine_fd)
    elif stat.S_ISDIR(entry.st.st_mode):
        shutil.rmtree(entry.name, dir_fd=root_fd)  # fd-based; refuses a top that became a link
    else:
        os.unlink(entry.name, dir_fd=root_fd)


@contextlib.contextmanager
def _quarantine_fd(spec: FilesSpec, dry_run: bool) -> Iterator[int | None]:
    if spec.quarantine_dir is None or dry_run:
        yield None
        return
    os.makedirs(spec.quarantine_dir, exist_ok=True)
    with _opened(os.path.realpath(spec.quarantine_dir)) as fd:
        yield fd


def _apply(spec: FilesSpec, ctx: RunContext, stop: threading.Event) -> StepResult:
    root = os.path.realpath(spec.root)  # the operator's root may be a link; nothing below it is followed
    try:
        root_fd = os.open(root, _DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        raise StepFailed(f"root {spec.root!r} is not a directory") from None
    try:
        return _apply_in(spec, ctx, stop, root, root_fd)
    finally:
        os.close(root_fd)


def _apply_in(spec: FilesSpec, ctx: RunContext, stop: threading.Event, root: str, root_fd: int) -> StepResult:
    free, usable = _free(root_fd)
    handled: list[str] = []
    # Filled as it goes: if the run is cancelled mid-step, the journal still gets what was done.
    ctx.progress.update(root=root, action=spec.action, entries=handled)
    freed = 0
    with _quarantine_fd(spec, ctx.dry_run) as quarantine_fd:
        for entry in _candidates(spec, root, root_fd, ctx):
            enough_free = spec.free_ratio is not None and usable > 0 and free / usable >= spec.free_ratio
            if enough_free or len(handled) >= spec.max_entries or stop.is_set():
                break
            size = _size(root_fd, entry)  # measured as it goes: checking every tree first could take long
            if not ctx.dry_run:
                _act(root_fd, entry, quarantine_fd)
            handled.append(entry.name)
            freed += size
            # In a dry run the filesystem does not change, so the freed space is estimated from sizes
            # (what is freed moves from used to free: `usable` stays the same).
            free = free + size if ctx.dry_run else _free(root_fd)[0]
    detail: dict[str, Any] = {"root": root, "action": spec.action, "bytes": freed, "entries": handled,
                              "free_ratio_after": round(free / usable, 4) if usable else None}
    return StepResult(rows=len(handled), detail=detail)


class FilesStep(StepType[FilesSpec]):
    key: ClassVar[str] = "files"
    spec: ClassVar[type[StepSpec]] = FilesSpec

    async def run(self, spec: FilesSpec, ctx: RunContext) -> StepResult:
        stop = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(_apply, spec, ctx, stop))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # A thread cannot be cancelled: tell it to stop after the entry at hand, and wait for
            # that, so what the step reports as done is all it did.
            stop.set()
            await asyncio.wait([work])
            raise
        except StepStopped as e:
            e.detail = {**ctx.progress, **e.detail}  # what was done before it stopped
            raise
        except OSError as e:
            raise StepFailed(f"{type(e).__name__}: {e}", dict(ctx.progress)) from None
