"""Labels select, never decide: what `check` refuses in a playbook.

Anyone who can reach Alertmanager's API (no login by default) can forge an alert, so a value
rendered from `labels`, `annotations` or `alert` must never become what a step touches: a write's
SQL parameter (or a parameter of a query whose rows a later step acts on), a Redis key, field or
value, a PID, a path, a URL, a command's argument, or a precheck/verify parameter (which would
decide whether to act). It may be free text — an http body, or a key the playbook names in
`label_text` (e.g. a status message). Targets come from `targets:`, re-found by the rule itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from remediator.templating import variables_read
from taskmedic.config.loader import Document, KeyPath, format_path

if TYPE_CHECKING:
    from remediator.config import Playbook, Step

ALERT_VARIABLES = frozenset({"labels", "annotations", "alert"})


def alert_variables(text: str) -> frozenset[str]:
    """Which of labels/annotations/alert a template reads."""
    return variables_read(text) & ALERT_VARIABLES


def templates(value: Any, path: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    """Every string under a validated model, with its YAML key path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from templates(getattr(value, name), (*path, name))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from templates(item, (*path, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from templates(item, (*path, str(key)))


def _consumed(playbook: Playbook, name: str) -> bool:
    """Whether a later step acts on this step's output rows."""
    return any(name == step.for_each or name in step.spec.reads_rows_of().values() for step in playbook.steps)


def _free_text(playbook: Playbook, step: Step, path: KeyPath) -> bool:
    """Where a step's template is not what it touches (its type says: an http body, a read whose
    rows nothing acts on)."""
    return len(path) > 3 and step.spec.free_text(str(path[3]), _consumed(playbook, step.name))


def label_problems(playbook: Playbook, doc: Document) -> list[str]:
    opted_in = set(playbook.label_text)
    found: set[str] = set()
    problems: list[str] = []
    places: list[tuple[KeyPath, str, bool]] = []
    for i, step in enumerate(playbook.steps):
        for path, text in templates(step.spec, ("steps", i, step.kind)):
            places.append((path, text, _free_text(playbook, step, path)))
    for name in ("precheck", "verify"):
        check = getattr(playbook, name)
        if isinstance(check, BaseModel):
            places += [(path, text, False) for path, text in templates(check, (name,))]
    for path, text, free in places:
        used = alert_variables(text)
        key = format_path(path)
        if not used:
            continue
        found.add(key)
        if free or key in opted_in:
            continue
        problems.append(f"{doc.where(path)}: {key}: reads {', '.join(sorted(used))}, which anyone able to post an "
                        "alert can forge; a label selects, it never decides what a step touches or whether it "
                        "runs. Act on `targets:` (re-found by the detection rule) instead, or, for free text "
                        "only, name this key in `label_text`")
    for j, key in enumerate(playbook.label_text):
        if key not in found:
            problems.append(f"{doc.where(('label_text', j))}: label_text[{j}]: {key!r} is not a template that "
                            "reads labels, annotations or alert")
    return problems
