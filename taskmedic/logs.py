"""Logging for both processes: `--log-format json|text`, `--log-level`; secrets never in clear."""

from __future__ import annotations

import json
import logging
import re
import sys
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


# Control characters (and Unicode line breaks) in a message or field would let a value that came
# from outside (an alert label) start a line of its own in a text log.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]} | {
    ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def escape(text: object) -> str:
    return str(text).translate(_CONTROL)


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


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={escape(v)}" for k, v in _extras(record).items())
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {escape(record.getMessage())}"
        if extras:
            line += f" {extras}"
        if record.exc_info:  # indented, so that no line of it (its message included) looks like a log line
            line += "".join(f"\n  {trace}" for trace in self.formatException(record.exc_info).splitlines())
        return scrub(line)


def setup(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
