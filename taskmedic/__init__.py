"""taskmedic's core, shared by the exporter and the remediator: configuration, connections,
detection rules, archive checks, the command line and logging."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("taskmedic")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
