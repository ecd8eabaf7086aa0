"""Alertmanager's webhook payload (version 4), validated, and who may send it.

Unknown extra fields are ignored (Grafana and newer Alertmanagers add some); every field that
taskmedic uses is checked, including what PostgreSQL cannot store (NUL characters, lone
surrogates, dates that do not exist in UTC), so a bad body is a precise 400 — never a 500.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from remediator.alert import AlertInfo
from taskmedic.config.loader import format_path

MAX_TEXT = 64 * 1024


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters are not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode (lone surrogate)") from None
    if len(value) > MAX_TEXT:
        raise ValueError(f"longer than {MAX_TEXT} characters")
    return value


def _utc(value: datetime) -> datetime:
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError("date out of range") from None


Text = Annotated[str, AfterValidator(_storable)]
Time = Annotated[datetime, AfterValidator(_utc)]
Labels = dict[Text, Text]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Alert(_Wire):
    status: Literal["firing", "resolved"]
    labels: Labels
    annotations: Labels = Field(default_factory=dict)
    startsAt: Time
    endsAt: Time | None = None
    generatorURL: Text = ""
    fingerprint: Annotated[Text, Field(min_length=1, max_length=256)]

    def info(self) -> AlertInfo:
        return AlertInfo(fingerprint=self.fingerprint, status=self.status, starts_at=self.startsAt,
                         labels=self.labels, annotations=self.annotations, ends_at=self.endsAt,
                         generator_url=self.generatorURL)


class Payload(_Wire):
    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: Text
    alerts: list[Alert]
    # Not used (each alert carries its own labels), so only their shape is checked.
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: Text = ""
    groupKey: Text = ""
    truncatedAlerts: int = Field(default=0, ge=0)


class InvalidPayload(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def problems_of(error: ValidationError, limit: int = 20) -> list[str]:
    out = [f"{format_path(e['loc']) if e['loc'] else '(body)'}: {e['msg']}"
           for e in error.errors(include_url=False)[:limit]]
    if error.error_count() > limit:
        out.append(f"... and {error.error_count() - limit} more")
    return out


def parse(body: bytes) -> Payload:
    """The validated payload, or InvalidPayload naming each problem by its JSON path."""
    try:
        return Payload.model_validate_json(body)
    except ValidationError as e:
        raise InvalidPayload(problems_of(e)) from None


def _raw(text: str) -> bytes:
    """Header text back to the bytes that were sent (aiohttp decodes undecodable bytes as
    surrogates), so a token of any bytes compares instead of raising."""
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Credentials:
    """Bearer tokens and/or one basic-auth pair; none configured (only with `auth: none`) means open."""

    tokens: tuple[str, ...] = ()
    basic: tuple[str, str] | None = None

    @property
    def required(self) -> bool:
        return bool(self.tokens) or self.basic is not None

    def allows(self, authorization: str | None) -> bool:
        if not self.required:
            return True
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() == "bearer":
            return self._token_ok(value.strip())
        if scheme.lower() == "basic":
            return self._basic_ok(value.strip())
        return False

    def _token_ok(self, given: str) -> bool:
        # Compare against every token, without stopping early, so timing says nothing.
        ok = False
        for token in self.tokens:
            ok |= hmac.compare_digest(_raw(given), token.encode())
        return ok

    def _basic_ok(self, given: str) -> bool:
        if self.basic is None:
            return False
        try:
            user, _, password = base64.b64decode(_raw(given), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeError):  # not base64 (any non-ASCII), or not UTF-8 inside
            return False
        user_ok = hmac.compare_digest(user.encode(), self.basic[0].encode())
        password_ok = hmac.compare_digest(password.encode(), self.basic[1].encode())
        return user_ok & password_ok
