"""Config: YAML → validated frozen objects (see loader for errors, model for the shape)."""

from exporter.config.loader import ConfigError, load
from exporter.config.model import ExporterConfig, System, redact

__all__ = ["ConfigError", "ExporterConfig", "System", "load", "redact"]
