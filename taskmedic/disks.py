"""How much of a filesystem is free, counted once for the exporter's gauges and the remediator's files step."""

from __future__ import annotations

import os


def free_space(st: os.statvfs_result) -> tuple[int, int]:
    """(free, usable) bytes of a filesystem, as `df` counts them: free is what non-root writers
    such as CAPE can still use (f_bavail, not f_bfree), usable is that plus what is in use (root's
    reserve left out), so free / usable is the free ratio, `df`'s Use% complement. The remediator's
    files step stops at the same ratio."""
    free = st.f_bavail * st.f_frsize
    return free, free + (st.f_blocks - st.f_bfree) * st.f_frsize
