"""The primitives every configuration model is built from: durations, names, DSNs and the
frozen, closed `Model` base."""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    SecretStr,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def parse_duration(value: Any) -> float:
    """`30s`, `10m`, `1.5h`, `2d`, or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 10m, 1h, 2d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError("expected a duration like 30s, 10m, 1h, 2d")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError("expected a plain SQL column name (letters, digits, underscore)")
    return value


def _qualified(value: str) -> str:
    parts = value.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.match(p) for p in parts):
        raise ValueError("expected a table name, optionally schema-qualified (schema.table)")
    return value


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("expected a name of letters, digits, '_', '-' or '.'")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"not a valid regular expression: {e}") from None
    return value


def _dsn(scheme_prefixes: tuple[str, ...], what: str) -> Any:
    def check(value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        try:
            parts = urlsplit(raw)
            _ = parts.port  # raises on a non-numeric port
        except ValueError:
            raise ValueError(f"not a valid {what} URL") from None
        if not parts.scheme.startswith(scheme_prefixes) or not (parts.hostname or parts.path):
            raise ValueError(f"expected a {what} URL like {scheme_prefixes[0]}://user@host:port/db")
        return value
    return AfterValidator(check)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Identifier = Annotated[str, AfterValidator(_identifier)]
TableName = Annotated[str, AfterValidator(_qualified)]
Name = Annotated[str, AfterValidator(_name)]
Regex = Annotated[str, AfterValidator(_regex)]
PostgresDsn = Annotated[SecretStr, _dsn(("postgres",), "PostgreSQL")]
RedisUrl = Annotated[SecretStr, _dsn(("redis", "rediss", "unix"), "Redis")]


_SECRET_PARAM = re.compile(r"(?i)([?&][^=&#\s]*(?:password|passwd|secret|token)[^=&#\s]*=)[^&#\s]*")


def redact(url: str) -> str:
    """A DSN or URL fit for output: its password, and every query parameter whose name says it
    holds a secret (`password=`, `sslpassword=`, `token=`...), replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    return _SECRET_PARAM.sub(r"\1***", parts.geturl())


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
