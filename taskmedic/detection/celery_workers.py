"""Celery-backed tasks (Timesketch): a row is alive while a live worker reports a task working on
it — what `celery inspect active` (and `inspect reserved`) get over the broker's pidbox — or while
such a task waits in the broker queue. Which rows a task works on comes from its arguments
(`celery_active.tasks`: Timesketch's run_plaso / run_csv_jsonl carry the timeline id at args[5]
or as `timeline_id`). No worker answering is unknown, never "all dead".

Celery itself speaks the pidbox protocol here; it is an optional extra (`taskmedic[celery]`).
"""

from __future__ import annotations

import ast
import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from taskmedic.config.model import CeleryActive, TaskArgument
from taskmedic.detection.base import JudgementUnknown

_apps: dict[str, Any] = {}
MISSING = "judging celery_active needs Celery: pip install 'taskmedic[celery]'"


def _app(broker: str) -> Any:
    try:
        from celery import Celery  # type: ignore[import-untyped]
    except ImportError:
        raise JudgementUnknown(MISSING) from None
    if broker not in _apps:
        _apps[broker] = Celery("taskmedic-inspect", broker=broker, set_as_current=False)
    return _apps[broker]


def _values(raw: Any) -> Any:
    """args/kwargs as a worker reports them: the values themselves (Celery >= 4), or their repr."""
    if isinstance(raw, str):
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return None
    return raw


def named_row(args: Any, kwargs: Any, where: TaskArgument) -> str | None:
    """The row id a task's arguments carry, as text (how the judged column is read)."""
    args, kwargs = _values(args), _values(kwargs)
    if where.keyword is not None and isinstance(kwargs, Mapping) and kwargs.get(where.keyword) is not None:
        return str(kwargs[where.keyword])
    if where.position is not None and isinstance(args, list | tuple) and len(args) > where.position:
        return None if args[where.position] is None else str(args[where.position])
    return None


def reported_rows(replies: Iterable[Sequence[Mapping[str, Any]]], check: CeleryActive) -> set[str]:
    """Row ids the tasks in the workers' replies (lists of request infos) work on."""
    rows: set[str] = set()
    for tasks in replies:
        for info in tasks:
            info = info.get("request", info)  # `reserved`/`scheduled` wrap the request
            where = check.tasks.get(str(info.get("name") or info.get("type") or ""))
            if where is not None and (row := named_row(info.get("args"), info.get("kwargs"), where)):
                rows.add(row)
    return rows


def queued_rows(messages: Iterable[bytes], check: CeleryActive) -> set[str]:
    """Row ids named by task messages waiting in the broker (kombu's Redis envelope, Celery's
    message protocol 2: headers name the task, the body is [args, kwargs, embed])."""
    rows: set[str] = set()
    for raw in messages:
        try:
            envelope = json.loads(raw)
            where = check.tasks.get(str(envelope.get("headers", {}).get("task")))
            if where is None:
                continue
            body = envelope["body"]
            if envelope.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args, kwargs, *_ = json.loads(body)
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # not a protocol-2 JSON task message: it names nothing we can read
        if row := named_row(args, kwargs, where):
            rows.add(row)
    return rows


def working_rows(check: CeleryActive, broker: str, queue_scan: int) -> set[str]:
    """Blocking: the rows live workers report working on, plus those queued in the broker.
    Raises JudgementUnknown when no worker answers or the broker cannot be reached."""
    app = _app(broker)
    try:
        inspect = app.control.inspect(timeout=check.timeout)
        active = inspect.active()
        if not active:
            raise JudgementUnknown(f"no Celery worker answered `inspect active` within {check.timeout:g}s")
        reserved = inspect.reserved() or {}
        with app.connection_for_read() as conn:
            client = conn.default_channel.client
            messages = [m for q in check.queues for m in client.lrange(q, 0, queue_scan - 1)]
    except JudgementUnknown:
        raise
    except Exception as e:  # kombu's OperationalError, redis errors: the broker is unreachable
        raise JudgementUnknown(f"cannot ask Celery workers over the broker: {type(e).__name__}: {e}") from None
    return reported_rows([*active.values(), *reserved.values()], check) | queued_rows(messages, check)
