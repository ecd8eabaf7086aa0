"""Logging for both processes: `--log.format logfmt|json`, `--log.level`; secrets never in clear.

Both formats put one record on one line whatever a value holds: logfmt quotes and escapes
(a label containing a newline cannot forge a second log line), JSON escapes by construction.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

# user:password@ in any URL-looking text, secret query parameters (`?password=`), bearer tokens
_SECRETS = [(re.compile(r"(//[^:/@\s]*):[^@/\s]+@"), r"\1:***@"),
            (re.compile(r"(?i)([?&][^=&#\s\"']*(?:password|passwd|secret|token)[^=&#\s\"']*=)[^&#\s\"']*"), r"\1***"),
            (re.compile(r"(?i)(bearer\s+)[^\s\"']+"), r"\1***")]
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def scrub(text: str) -> str:
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
                                 "level": record.levelname.lower(), "logger": record.name,
                                 "msg": record.getMessage(), **_extras(record)}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(entry, default=str))


_BARE = re.compile(r"^[^\s=\"\\\x00-\x1f\x7f]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def logfmt_value(value: Any) -> str:
    """A value as logfmt writes it: bare when it can be, else quoted with every control character
    escaped."""
    text = value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(
        value, dict | list) else str(value)
    if _BARE.match(text):
        return text
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    text = _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), text)
    return f'"{text}"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
        fields: dict[str, Any] = {"ts": ts.replace("+00:00", "Z"), "level": record.levelname.lower(),
                                  "logger": record.name, "msg": record.getMessage(), **_extras(record)}
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return scrub(" ".join(f"{k}={logfmt_value(v)}" for k, v in fields.items()))


def setup(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())  # "text": logfmt
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
