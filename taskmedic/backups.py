"""Is a backup file still being written? Shared by the exporter (which judges only finished files)
and the remediator (whose quarantine never touches a file in progress).

A file is in progress while a process has it open for writing — seen in /proc/<pid>/fd and the
access mode in /proc/<pid>/fdinfo, for the processes this one may inspect (same user, or root; in
a container, those of its PID namespace) — or while it was modified within `quiet_for` seconds,
which covers writers that cannot be seen. A writer that pauses longer than that but keeps the file
open is still writing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

_PROC = "/proc"


def _opened_for_writing(pid: str, fd: str) -> bool:
    try:
        with open(f"{_PROC}/{pid}/fdinfo/{fd}") as info:
            for line in info:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    except (OSError, ValueError, IndexError):  # the process or descriptor went away meanwhile
        pass
    return False


def open_for_writing(paths: Iterable[str]) -> set[str]:
    """Those of `paths` that a visible process holds open for writing; one pass over /proc."""
    wanted = {os.path.realpath(p): p for p in paths}
    found: set[str] = set()
    if not wanted:
        return found
    try:
        pids = [p for p in os.listdir(_PROC) if p.isdigit()]
    except OSError:  # no /proc: nothing is visible, only modification times tell
        return found
    for pid in pids:
        try:
            fds = os.listdir(f"{_PROC}/{pid}/fd")
        except OSError:  # exited, or not ours to inspect
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{_PROC}/{pid}/fd/{fd}")
            except OSError:
                continue
            path = wanted.get(target)
            if path is not None and path not in found and _opened_for_writing(pid, fd):
                found.add(path)
    return found


def in_progress(path: str, quiet_for: float = 60.0) -> bool:
    """True while a process holds `path` open for writing or it was modified less than
    `quiet_for` seconds ago. A file that is gone is not in progress."""
    try:
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return False
    return time.time() - mtime < quiet_for or bool(open_for_writing([path]))
