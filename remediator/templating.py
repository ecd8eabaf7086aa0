"""Playbook templates (`{{ labels.x }}`), rendered in a Jinja sandbox.

Templates are written by the operator; alert values are only ever *data* handed to them, never
templates themselves. Every rendered value is a plain string that the step then binds as a SQL
parameter, an argv element, an escaped URL part or a path checked against a root — so how a
value is escaped is decided by where it goes, which is why rendering takes an `escape` function
that Jinja applies to each `{{ ... }}` output (not to the operator's literal text around it).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any
from urllib.parse import quote

from jinja2 import StrictUndefined, TemplateError, meta, nodes
from jinja2 import Template as JinjaTemplate
from jinja2.sandbox import SandboxedEnvironment
from pydantic import AfterValidator

MAX_OUTPUT = 64 * 1024

Escape = Callable[[str], str]


class RenderError(Exception):
    """A template could not be rendered for this alert (missing label, bad filter input, ...)."""


def _plain(value: str) -> str:
    return value


class UnsafeValue(Exception):
    """A rendered value that would change what its template addresses; the step is refused."""


def _unsafe_in_segment(value: str) -> str | None:
    if value in ("", ".", ".."):
        return "is empty, '.' or '..'"
    for c in value:
        if c in "/\\%" or c < " " or "\x7f" <= c <= "\x9f":
            return f"contains {c!r}"
    return None


def url_segment(value: str) -> str:
    """Percent-escape a value for (part of) one URL path segment or query value. A value that
    could name another resource once a server decodes it — a `/`, `\\`, `%`, a control
    character, or a whole `.`/`..`/empty segment — is refused rather than escaped: servers and
    proxies that decode `%2F` or `%2E%2E` before routing exist."""
    problem = _unsafe_in_segment(value)
    if problem is not None:
        raise UnsafeValue(f"URL value {value[:100]!r} {problem}; refused")
    return quote(value, safe="")


def glob_literal(value: str) -> str:
    """Escape Redis glob metacharacters so a value matches only itself inside a SCAN pattern."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", value)


@functools.cache
def _environment(escape: Escape) -> SandboxedEnvironment:
    def finalize(value: Any) -> str:
        return escape("" if value is None else str(value))

    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=finalize)


@functools.lru_cache(maxsize=1024)
def _compile(text: str, escape: Escape) -> JinjaTemplate:
    return _environment(escape).from_string(text)


def check_template(text: str) -> str:
    """Pydantic validator: reject a template with a syntax error, or one that reaches into Jinja's
    internals (`self`, `_private` attributes: a way around the check of what labels may decide;
    the sandbox would stop it only when it runs), when the playbook is loaded."""
    try:
        _compile(text, _plain)
        tree = _environment(_plain).parse(text)
    except TemplateError as e:
        line = getattr(e, "lineno", None)
        raise ValueError(f"template error: {e.message}" + (f" (template line {line})" if line else "")) from None
    if any(n.name == "self" for n in tree.find_all(nodes.Name)) or \
            any(n.attr.startswith("_") for n in tree.find_all(nodes.Getattr)):
        raise ValueError("a template may not use `self` or attributes starting with `_`")
    return text


Template = Annotated[str, AfterValidator(check_template)]


# What a template sees of the alert: anyone who can post an alert decides these values.
ALERT_VARIABLES = frozenset({"labels", "annotations", "alert"})


def references(text: str) -> set[str]:
    """The top-level variables a (syntactically valid) template reads, e.g. {"item"}."""
    return set(meta.find_undeclared_variables(_environment(_plain).parse(text)))


def is_templated(text: str) -> bool:
    return "{{" in text or "{%" in text


@functools.lru_cache(maxsize=1024)
def variables_read(text: str) -> frozenset[str]:
    """The top-level variables a template reads anywhere in it (filters, conditions and all)."""
    if not is_templated(text):
        return frozenset()
    try:
        return frozenset(meta.find_undeclared_variables(_environment(_plain).parse(text)))
    except TemplateError:
        return frozenset()  # a syntax error is reported by the template's own validator


def render(text: str, variables: Mapping[str, Any], escape: Escape | None = None) -> str:
    if not is_templated(text):
        return text
    try:
        out = _compile(text, escape or _plain).render(variables)
    except TemplateError as e:
        raise RenderError(f"template {text!r}: {e.message}") from None
    except (ValueError, TypeError, ArithmeticError) as e:  # a filter given an unusable value
        raise RenderError(f"template {text!r}: {e}") from None
    if len(out) > MAX_OUTPUT:
        raise RenderError(f"template {text!r}: output longer than {MAX_OUTPUT} characters")
    return out


def render_all(texts: list[str], variables: Mapping[str, Any], escape: Escape | None = None) -> list[str]:
    return [render(t, variables, escape) for t in texts]
