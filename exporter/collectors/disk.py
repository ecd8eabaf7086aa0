"""DiskCollector: free space and inodes of a path's filesystem (statvfs, as `df` reports)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from exporter.collectors.base import BlockingCalls
from exporter.config.model import Disk, ExporterConfig
from exporter.connections import Connections
from exporter.metrics import Sample, sample


def free_space(st: os.statvfs_result) -> tuple[int, int]:
    """(free, usable) bytes of a filesystem, as `df` counts them: free is what non-root writers
    such as CAPE can still use (f_bavail, not f_bfree), usable is that plus what is in use (root's
    reserve left out), so free / usable is the free ratio, `df`'s Use% complement. The remediator's
    files step stops at the same ratio."""
    free = st.f_bavail * st.f_frsize
    return free, free + (st.f_blocks - st.f_bfree) * st.f_frsize


@dataclass
class DiskCollector:
    disk: Disk
    _blocking: BlockingCalls = field(default_factory=BlockingCalls, init=False, repr=False)

    @property
    def name(self) -> str:
        return f"disk:{self.disk.path}"

    @property
    def interval(self) -> float:
        return self.disk.interval

    @property
    def timeout(self) -> float:
        return self.disk.timeout

    async def collect(self) -> list[Sample]:
        # statvfs can block on a hung network filesystem: keep it off the event loop.
        st = await self._blocking.run(os.statvfs, self.disk.path)
        path = self.disk.path
        size = st.f_blocks * st.f_frsize
        free, usable = free_space(st)
        ratio = free / usable if usable else 0.0
        inodes = st.f_files
        inode_ratio = st.f_favail / inodes if inodes else 1.0
        return [
            sample("taskmedic_disk_free_bytes", free, path=path),
            sample("taskmedic_disk_size_bytes", size, path=path),
            sample("taskmedic_disk_free_ratio", ratio, path=path),
            sample("taskmedic_disk_inodes_free_ratio", inode_ratio, path=path),
        ]


def build(config: ExporterConfig, connections: Connections) -> list[DiskCollector]:
    return [DiskCollector(d) for d in config.disks]
