"""What both processes say about themselves on /metrics: `taskmedic_build_info`, the reload
status of their configuration, and prometheus_client's process and platform collectors
(`process_*`, `python_info`), so the usual node/process dashboards and alerts work unchanged."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric

from taskmedic import __version__
from taskmedic.reload import ReloadStatus


@functools.cache
def revision() -> str:
    """The source revision this process runs: `TASKMEDIC_REVISION` when the build set it,
    else the git commit of a source checkout, else "unknown"."""
    if os.environ.get("TASKMEDIC_REVISION"):
        return os.environ["TASKMEDIC_REVISION"]
    git = shutil.which("git")
    source = Path(__file__).resolve().parent.parent
    if git is None or not (source / ".git").exists():
        return "unknown"
    try:
        out = subprocess.run([git, "-C", str(source), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


class SelfCollector:
    """build_info and the config reload gauges, read fresh at every scrape."""

    def __init__(self, reload_status: Callable[[], ReloadStatus]) -> None:
        self._status = reload_status

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("taskmedic_build_info", "A metric with a constant 1, labelled with the version, "
                                 "revision and Python version taskmedic runs.",
                                 labels=["version", "revision", "pythonversion"])
        info.add_metric([__version__, revision(), platform.python_version()], 1)
        yield info
        status = self._status()
        yield GaugeMetricFamily("taskmedic_config_last_reload_successful",
                                "1 when the last configuration (re)load succeeded, 0 while the running "
                                "configuration is older than a file that failed to load.",
                                value=1 if status.successful else 0)
        yield GaugeMetricFamily("taskmedic_config_last_reload_success_timestamp_seconds",
                                "Unix time of the last successful configuration (re)load.",
                                value=status.last_success)


def self_registry(reload_status: Callable[[], ReloadStatus]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    add_self_metrics(registry, reload_status)
    return registry


def add_self_metrics(registry: CollectorRegistry, reload_status: Callable[[], ReloadStatus]) -> None:
    registry.register(SelfCollector(reload_status))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
