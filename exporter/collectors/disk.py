"""DiskCollector: free space and inodes of a path's filesystem (statvfs, as `df` reports)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from exporter.collectors.base import BlockingCalls
from exporter.config import ExporterConfig
from exporter.metrics import Sample, sample
from taskmedic.config.model import Disk
from taskmedic.connections import Connections
from taskmedic.disks import free_space


@dataclass
class DiskCollector:
    disk: Disk
    _blocking: BlockingCalls = field(default_factory=BlockingCalls, init=False, repr=False)

    @property
    def name(self) -> str:
        return f"disk:{self.disk.path}"

    @property
    def subject(self) -> tuple[str, str]:
        return "path", self.disk.path

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
