"""RQ's Redis layout (rq/queue.py, rq/registry.py, rq/job.py, rq/utils.py).

`rq:queues` is the set of queue keys `rq:queue:<name>` (lists: RPUSH, consumed from the left);
a job is the hash `rq:job:<id>`; each queue has registries `rq:<kind>:<name>` (sorted sets).
In the started registry (`rq:wip:<name>`) an entry's score is when its lease runs out, and the
entry is `<job id>` (RQ 1.x, a custom id may contain ':') or `<job id>:<execution id>` (RQ 2+).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

QUEUES = "rq:queues"
QUEUE_PREFIX = "rq:queue:"
JOB_PREFIX = "rq:job:"
REGISTRY_PREFIXES = {"started": "rq:wip:", "failed": "rq:failed:", "finished": "rq:finished:",
                     "deferred": "rq:deferred:", "scheduled": "rq:scheduled:", "canceled": "rq:canceled:"}
DEFAULT_FAILURE_TTL = 365 * 86400.0  # rq/defaults.py: DEFAULT_FAILURE_TTL, one year


def queue_key(queue: str) -> str:
    return QUEUE_PREFIX + queue


def queue_name(key: bytes | str) -> str:
    """A member of `rq:queues` → the queue's name."""
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    return text.removeprefix(QUEUE_PREFIX)


def registry_key(kind: str, queue: str) -> str:
    return REGISTRY_PREFIXES[kind] + queue


def job_key(job_id: bytes | str) -> str:
    return JOB_PREFIX + (job_id.decode("utf-8", "replace") if isinstance(job_id, bytes) else job_id)


def job_id_candidates(entry: str) -> tuple[str, ...]:
    """The job ids a started-registry entry may name, most specific first: the entry itself
    (RQ 1.x), then what precedes its last ':' (RQ 2+'s `<job id>:<execution id>`)."""
    return (entry, entry.rpartition(":")[0]) if ":" in entry else (entry,)


def parse_time(raw: bytes | None) -> float | None:
    """RQ's `2026-11-23T10:00:00.123456Z` (UTC) → unix time; None when absent or unreadable."""
    if not raw:
        return None
    text = raw.decode(errors="replace").rstrip("Z")
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def format_time(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(at))
