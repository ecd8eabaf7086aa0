"""Reading a configured engine's keys (`taskmedic.config.engine`): key templates rendered,
turned into SCAN globs and parsed back, and the engines' clocks (seconds, milliseconds, ISO 8601)."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from taskmedic.config.engine import Clock

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def render(template: str, **names: str) -> str:
    """The key a template names for these values ({{ and }} are literal braces)."""
    return template.format_map(_Strict(names))


class _Strict(dict[str, str]):
    def __missing__(self, key: str) -> str:
        raise KeyError(f"key template needs {{{key}}}, which is not known here")


def _pieces(template: str) -> list[tuple[str, str | None]]:
    return [(literal, name) for literal, name, _, _ in string.Formatter().parse(template)]


def glob(template: str, **names: str) -> str:
    """A SCAN pattern matching every key of the template (the given names filled in)."""
    out = []
    for literal, name in _pieces(template):
        out.append(_GLOB_SPECIAL.sub(r"\\\1", literal))
        if name is not None:
            out.append(_GLOB_SPECIAL.sub(r"\\\1", names[name]) if name in names else "*")
    return "".join(out)


def parser(template: str) -> re.Pattern[str]:
    """A regex whose named groups read a key of the template back into its values. Each value is
    the shortest that fits, but the last (so `acks.{worker}.{queue}` reads a dotted queue name)."""
    pieces = _pieces(template)
    named = [name for _, name in pieces if name is not None]
    out = []
    seen: set[str] = set()
    for literal, name in pieces:
        out.append(re.escape(literal))
        if name is None:
            continue
        if name in seen:
            out.append(f"(?P={name})")
            continue
        seen.add(name)
        out.append(f"(?P<{name}>.+)" if name == named[-1] else f"(?P<{name}>.+?)")
    return re.compile("^" + "".join(out) + "$", re.DOTALL)


def parse(pattern: re.Pattern[str], key: bytes | str) -> dict[str, str] | None:
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    m = pattern.match(text)
    return m.groupdict() if m else None


def seconds(raw: Any, unit: Clock) -> float | None:
    """A time as an engine writes it → unix seconds; None when absent or unreadable."""
    if raw is None or raw == b"" or raw == "":
        return None
    try:
        if unit == "iso8601":
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            parsed = datetime.fromisoformat(text.rstrip("Z").replace(" ", "T"))
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
        value = float(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    return value / 1000.0 if unit == "ms" else value


def json_object(raw: Any) -> dict[str, Any] | None:
    """A JSON object from Redis (bytes or text), or None when it is not one."""
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        value = json.loads(raw)
    except (ValueError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def job_text(value: Any) -> str | None:
    """A job carried inside another JSON object, as the JSON text an engine queues: kept as is
    when it is already text (Sidekiq 6+ stores the payload as a JSON string), else serialized."""
    if isinstance(value, str):
        return value if json_object(value) is not None else None
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return None
