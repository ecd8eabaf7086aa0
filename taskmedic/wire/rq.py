"""RQ's Redis layout (rq/queue.py, rq/registry.py, rq/job.py, rq/utils.py).

`rq:queues` is the set of queue keys `rq:queue:<name>` (lists: RPUSH, consumed from the left);
a job is the hash `rq:job:<id>`; each queue has registries `rq:<kind>:<name>` (sorted sets).
In the started registry (`rq:wip:<name>`) an entry's score is when its lease runs out, and the
entry is `<job id>` (RQ 1.x, a custom id may contain ':') or `<job id>:<execution id>` (RQ 2+).

A worker's liveness, by RQ's own evidence and Redis' clock only (rq 3.0: rq/worker/base.py,
rq/worker/worker_classes.py): while busy, the parent process sets the TTL of `rq:worker:<name>`
to `job_monitoring_interval + 60` s every `job_monitoring_interval` (30 s by default), so a
live busy worker's key never has less than 60 s left; and the parent subscribes to
`rq:pubsub:<name>` for its whole life on a connection its work horse inherits through fork.
A worker is gone when its key is missing or has less than `worker_ttl_below` left (a missed
heartbeat) AND nobody subscribes to its channel. A stale key with a subscriber is an *orphaned
horse*: the parent was killed and the horse, in its own process group, is still running the job
(it finishes it and writes its result); that is not judged dead.
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

QUEUES = "rq:queues"
QUEUE_PREFIX = "rq:queue:"
JOB_PREFIX = "rq:job:"
WORKER_PREFIX = "rq:worker:"
PUBSUB_PREFIX = "rq:pubsub:"
RESULTS_PREFIX = "rq:results:"
REGISTRY_PREFIXES = {"started": "rq:wip:", "failed": "rq:failed:", "finished": "rq:finished:",
                     "deferred": "rq:deferred:", "scheduled": "rq:scheduled:", "canceled": "rq:canceled:"}
DEFAULT_FAILURE_TTL = 365 * 86400.0  # rq/defaults.py: DEFAULT_FAILURE_TTL, one year
BUSY_TTL_FLOOR = 60.0  # rq/worker/base.py get_heartbeat_ttl: min(timeout, interval) + 60, renewed every interval
# 60 s less half of RQ's default job_monitoring_interval (30 s): a heartbeat 15 s late is not death
DEFAULT_WORKER_TTL_BELOW = 45.0
RESULT_FAILED = 2  # rq/results.py Result.Type.FAILED
RESULTS_KEPT = 10  # rq/results.py Result.save: XADD ... MAXLEN 10

Liveness = Literal["alive", "gone", "orphaned", "unknown"]


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


def worker_key(worker: str) -> str:
    return WORKER_PREFIX + worker


def pubsub_channel(worker: str) -> str:
    return PUBSUB_PREFIX + worker


def liveness(pttl_ms: int | None, subscribers: int | None, ttl_below: float) -> Liveness:
    """A worker's liveness from the PTTL of `rq:worker:<name>` (-2 missing, -1 no expiry) and
    `PUBSUB NUMSUB rq:pubsub:<name>`; None for a reply that could not be read (e.g. NOPERM).

    A key without expiry is a ghost: RQ always expires a live worker's key, and an orphaned horse
    that finishes recreates it with its counters only. A fresh key without a subscriber is alive:
    a reconnecting worker drops its subscription for a moment, and a dead one's key runs out."""
    if pttl_ms is None or subscribers is None:
        return "unknown"
    if pttl_ms >= 0 and pttl_ms >= ttl_below * 1000:
        return "alive"
    return "gone" if subscribers == 0 else "orphaned"


def failure_result(message: str) -> dict[str, str | int]:
    """The fields of a failure Result in `rq:results:<job id>` as RQ 3 writes one for a job its
    cleanup failed (rq/results.py serialize: no worker, the message zlib-compressed, base64)."""
    packed = base64.b64encode(zlib.compress(message.encode())).decode()
    return {"type": RESULT_FAILED, "worker_name": "", "exc_string": packed}


def retry_interval(raw_intervals: bytes | str | None, retries_left: int) -> int:
    """rq/job.py Job.get_retry_interval: the interval before the next try, from the job's JSON
    `retry_intervals` (the last ones are used first; 0: retry at once)."""
    try:
        intervals = json.loads(raw_intervals) if raw_intervals else None
    except ValueError:
        return 0
    if not isinstance(intervals, list) or not intervals:
        return 0
    value = intervals[max(len(intervals) - retries_left, 0)]
    return int(value) if isinstance(value, int | float) else 0


def results_key(job_id: str) -> str:
    return RESULTS_PREFIX + job_id


def job_id_candidates(entry: str) -> tuple[str, ...]:
    """The job ids a started-registry entry may name, most specific first: the entry itself
    (RQ 1.x), then what precedes its last ':' (RQ 2+'s `<job id>:<execution id>`)."""
    return (entry, entry.rpartition(":")[0]) if ":" in entry else (entry,)


def started_by(entry: str, replies: Iterator[list[Any]]) -> tuple[str, str] | None:
    """The job a started-registry entry names and its worker, if the job is still `started` by
    one. `replies` gives, per id of `job_id_candidates(entry)`, the reply to `HMGET rq:job:<id>
    status worker_name`; the entry names the first whose hash exists."""
    found = [(job_id, next(replies)) for job_id in job_id_candidates(entry)]
    job = next(((job_id, fields) for job_id, fields in found if fields[0] is not None), None)
    if job is None:
        return None
    job_id, (status, worker) = job
    if _text(status) != "started" or not worker:
        return None
    return job_id, _text(worker)


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


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


@dataclass(frozen=True)
class StartedJob:
    """A started-registry entry whose job is still `started` by a named worker."""

    queue: str
    entry: str  # the started-registry member
    job_id: str
    worker: str


async def started_jobs(client: Any, entries: list[tuple[str, str]]) -> list[StartedJob]:
    """Of (queue, started-registry member) pairs, those whose job is still `started` by a worker,
    read in one round trip (see `started_by`)."""
    if not entries:
        return []
    async with client.pipeline(transaction=False) as reads:
        for _, entry in entries:
            for job_id in job_id_candidates(entry):
                reads.hmget(job_key(job_id), ["status", "worker_name"])
        replies = iter(await reads.execute())
    return [StartedJob(queue, entry, *job) for queue, entry in entries
            if (job := started_by(entry, replies)) is not None]

