"""Config: YAML → validated frozen objects (see loader for errors, model for the shape)."""

from taskmedic.config.loader import ConfigError, load
from taskmedic.config.model import System, redact

__all__ = ["ConfigError", "System", "load", "redact"]
