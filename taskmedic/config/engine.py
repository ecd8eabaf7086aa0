"""A Redis-backed job engine described by configuration (`queues: {type: engine}`): where work
waits, where a worker holds the work it runs, how a worker proves it is alive, and how the
engine's own recovery gives a dead holder's work back. The built-in profiles `dramatiq`,
`bullmq`, `sidekiq` and `arq` are written in this model (docs/engines.md); reading it is
`taskmedic.wire.engine`, judging it `taskmedic.detection.engine`.

Keys are templates: `{queue}`, `{worker}` and `{job}` stand for names read from Redis (never
from an alert); `{{` and `}}` are literal braces (a cluster hash tag such as `{bull}`).
"""

from __future__ import annotations

import string
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from taskmedic.config.types import Duration, Model, Name, Regex

PLACEHOLDERS = frozenset({"queue", "worker", "job"})
Clock = Literal["s", "ms", "iso8601"]  # seconds or milliseconds since the epoch, or an ISO 8601 UTC time


def placeholders(template: str) -> set[str]:
    """The placeholders a key template uses; ValueError if it is malformed."""
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"malformed key template {template!r}: {e} (write {{{{ and }}}} for literal braces)") \
            from None
    # `{queue!r}` or `{queue:.3}` would render another key than the one SCAN found and parsed
    shaped = [f"{{{f}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}" for f, spec, conv in parsed
              if spec or conv]
    if shaped:
        raise ValueError(f"key template {template!r} uses {', '.join(shaped)}: a placeholder is the name as "
                         "it is, without a conversion or format spec")
    fields = [f for f, _, _ in parsed]
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        raise ValueError(f"key template {template!r} uses {', '.join('{' + u + '}' for u in unknown)}; "
                         "only {queue}, {worker} and {job} are known")
    return set(fields)


def _template(value: str) -> str:
    if not value:
        raise ValueError("a key template cannot be empty")
    placeholders(value)
    return value


KeyTemplate = Annotated[str, AfterValidator(_template)]


def _uses(template: str | None, allowed: set[str], where: str) -> None:
    if template is None:
        return
    extra = placeholders(template) - allowed
    if extra:
        raise ValueError(f"{where} {template!r} cannot use {', '.join('{' + e + '}' for e in sorted(extra))}: "
                         f"only {', '.join('{' + a + '}' for a in sorted(allowed)) or 'no placeholder'} is known there")


class EngineQueues(Model):
    """Where work waits for a worker: one list or sorted set per queue."""

    key: KeyTemplate  # with {queue}: "dramatiq:{queue}", "bull:{queue}:wait", "queue:{queue}"
    type: Literal["list", "zset"] = "list"
    take_from: Literal["left", "right"] = "left"  # list: the end workers consume from (its oldest item)
    listed_in: str | None = None  # a set whose members are the queue names (Sidekiq's `queues`)
    marker: KeyTemplate | None = None  # with {queue}: a key that exists per queue, found by SCAN
    ignore: Regex | None = None  # discovered names that are not queues of waiting work (Dramatiq's `<q>.XQ`)

    @model_validator(mode="after")
    def _check(self) -> EngineQueues:
        _uses(self.key, {"queue"}, "queues.key")
        _uses(self.marker, {"queue"}, "queues.marker")
        if self.marker is not None and "queue" not in placeholders(self.marker):
            raise ValueError("queues.marker must contain {queue}: it is how queues are discovered")
        return self


class JobTime(Model):
    """Where the time a job was enqueued is kept (for the oldest waiting job's age)."""

    source: Literal["member", "hash", "hash_field", "score"]
    # member: the queue's member is the job as JSON; hash: a hash per job (`key`, with {job});
    # hash_field: a hash of jobs (`key`) whose field {job} is the job as JSON; score: the zset score
    key: KeyTemplate | None = None
    field: str | None = None  # the hash field or JSON key holding the time
    unit: Clock = "s"

    @model_validator(mode="after")
    def _check(self) -> JobTime:
        needs_key = self.source in ("hash", "hash_field")
        if needs_key != (self.key is not None):
            raise ValueError(f"job_time.source {self.source!r} {'needs' if needs_key else 'takes no'} `key`")
        if (self.source != "score") != (self.field is not None):
            raise ValueError(f"job_time.source {self.source!r} {'takes no' if self.source == 'score' else 'needs'} "
                             "`field`")
        _uses(self.key, {"queue", "job"}, "job_time.key")
        return self


class Holding(Model):
    """Where a worker keeps the jobs it is running.

    - `set` / `list`: a set or list of job ids per worker and queue (`key` with {worker} and/or
      {queue}: Dramatiq's acks, BullMQ's active list);
    - `hash`: a hash per worker whose fields are its running jobs, each value a JSON object that
      names the queue (`queue_field`) and carries the job itself (`job_field`): Sidekiq's
      `<identity>:workers`, the only copy of a running job;
    - `lock`: the queue's own members that have a key per job (`key` with {job}): arq keeps a
      running job in its queue and marks it with `arq:in-progress:<id>`.
    """

    type: Literal["set", "list", "hash", "lock"]
    key: KeyTemplate
    workers_in: str | None = None  # a set listing the workers (Sidekiq's `processes`); else SCAN for `key`
    # set/list: a key per job ({job}) that the engine writes at every move of the job (BullMQ's job
    # hash), WATCHed by the give-back instead of `key` when that key is shared by all workers of a
    # queue and so changes at every take and finish (watching BullMQ's active list, a busy queue
    # aborts every give-back)
    job_key: KeyTemplate | None = None
    queue_field: str | None = None
    job_field: str | None = None
    job_id_field: str = "jid"  # hash: the key of the job's JSON that is its id

    @model_validator(mode="after")
    def _check(self) -> Holding:
        used = placeholders(self.key)
        if self.type == "hash":
            if used != {"worker"}:
                raise ValueError("holding.key of a hash holding is one hash per worker: use exactly {worker}")
            if self.queue_field is None or self.job_field is None:
                raise ValueError("a hash holding needs queue_field and job_field (where each value names "
                                 "its queue and carries its job)")
        elif self.type == "lock":
            if used != {"job"}:
                raise ValueError("holding.key of a lock holding is a key per job: use exactly {job}")
        elif "queue" not in used or "job" in used:
            raise ValueError(f"holding.key of a {self.type} holding has the job ids as members: "
                             "use {queue} (and {worker} when it is per worker), not {job}")
        if self.workers_in is not None and "worker" not in used:
            raise ValueError("workers_in lists workers: holding.key must contain {worker}")
        if self.job_key is not None:
            if self.type not in ("set", "list") or "job" not in placeholders(self.job_key):
                raise ValueError("holding.job_key is a key per job ({job}) watched instead of a set or list holding")
            _uses(self.job_key, self.names(), "holding.job_key")
        return self

    def names(self) -> set[str]:
        """The placeholders a held job is known by: its job, its queue, and its worker when the
        holding is per worker."""
        return placeholders(self.key) | {"queue", "job"}


class Heartbeat(Model):
    """How a worker (or, for `key` with {queue}, any worker of a queue) proves it is alive.

    - `zset`: its score in one sorted set (`member`, default {worker}) is its last beat;
    - `hash`: a hash per worker (`key` with {worker}) whose `field` is its last beat;
    - `ttl`: a key the worker re-expires to `expires_after` on every beat: its remaining TTL tells
      how long ago it beat, on Redis' clock, whatever the worker's clock says (Sidekiq's <identity>);
    - `key`: the key exists (its expiry is the engine's own death rule); with `dead_after`, only a
      key that stays missing that long is death (arq deletes its queue's shared health key when
      any one worker stops gracefully, while the others run on and rewrite it)."""

    type: Literal["zset", "hash", "ttl", "key"]
    key: KeyTemplate
    member: KeyTemplate = "{worker}"
    field: str | None = None
    unit: Clock = "s"
    # zset/hash: a beat older than this is death; key: missing for this long is death
    dead_after: Duration | None = Field(default=None, gt=0)
    missing: Literal["dead", "unknown"] = "unknown"  # no beat at all for a holder that holds work
    expires_after: Duration | None = Field(default=None, gt=0)  # ttl: the expiry each beat sets

    @model_validator(mode="after")
    def _check(self) -> Heartbeat:
        if (self.type == "hash") != (self.field is not None):
            raise ValueError("heartbeat.field is the beat of a `hash` heartbeat, and only of it")
        if self.type != "key" and self.dead_after is None:
            raise ValueError(f"heartbeat.dead_after is needed for a {self.type} heartbeat: how old a beat means death")
        if (self.type == "ttl") != (self.expires_after is not None):
            raise ValueError("heartbeat.expires_after is the expiry each beat sets on a `ttl` heartbeat's key, "
                             "and only of it")
        if self.type == "ttl" and self.dead_after is not None and self.expires_after is not None \
                and self.dead_after >= self.expires_after:
            raise ValueError("heartbeat.dead_after must be shorter than expires_after: the key is gone by then")
        _uses(self.key, {"worker", "queue"}, "heartbeat.key")
        _uses(self.member, {"worker", "queue"}, "heartbeat.member")
        return self


Command = Literal["hincrby", "hset", "hdel", "zadd", "zrem", "sadd", "srem", "xadd", "del", "lrem", "set", "incr"]


class Write(Model):
    """One more write the engine's own recovery does, e.g. `[hincrby, "bull:{queue}:{job}", stc, "1"]`.
    Arguments are templates; `{now_ms}` and `{now}` are the Redis server's time."""

    command: Command
    args: list[str] = Field(min_length=1)


def _write(value: object) -> object:
    """`[command, arg, ...]` → a Write."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        return {"command": value[0], "args": [str(a) for a in value[1:]]}
    return value


Writes = list[Annotated[Write, BeforeValidator(_write)]]


class Attempts(Model):
    """A counter the engine keeps per job, and the count at which its recovery gives up on the job
    instead of giving it back (BullMQ fails a job stalled more than maxStalledCount times)."""

    key: KeyTemplate  # with {queue} and/or {job}: a hash (with `field`) or a plain counter
    field: str | None = None
    max: int = Field(ge=0)

    @model_validator(mode="after")
    def _check(self) -> Attempts:
        _uses(self.key, {"queue", "job"}, "recovery.attempts.key")
        return self


class Recovery(Model):
    """What the engine itself does to give a dead holder's job back; the `engine` step does the
    same, atomically per holder (its keys WATCHed, so a holder that beats again is left alone)."""

    # with {queue}: where the job goes back ("dramatiq:{queue}"); a lock holding's job never left
    # its queue: giving it back is deleting its lock
    push_to: KeyTemplate | None = None
    end: Literal["left", "right"] = "right"  # the engine's own choice of end
    value: Literal["job_id", "job"] = "job_id"  # the id, or the job itself (a hash holding's job_field)
    # a hash whose field {job} is the held job (with {queue}: Dramatiq's "dramatiq:{queue}.msgs"): an
    # id whose job is no longer there (its queue was purged) is only dropped from where it was held,
    # never pushed back (a worker would fetch an id with no job, and hold it for ever)
    push_if_in: KeyTemplate | None = None
    also: Writes = Field(default_factory=list)  # per job given back: {queue}, {worker}, {job}
    per_worker: Writes = Field(default_factory=list)  # once per dead worker, after its jobs: {worker}
    attempts: Attempts | None = None  # a job whose counter reached `max` is not given back (a person looks)

    @model_validator(mode="after")
    def _check(self) -> Recovery:
        _uses(self.push_to, {"queue"}, "recovery.push_to")
        _uses(self.push_if_in, {"queue"}, "recovery.push_if_in")
        if self.push_if_in is not None and self.push_to is None:
            raise ValueError("recovery.push_if_in says which held ids are pushed back: it needs push_to")
        for where, writes, allowed in (("recovery.also", self.also, {"queue", "worker", "job"}),
                                       ("recovery.per_worker", self.per_worker, {"worker"})):
            for w in writes:
                for a in w.args:
                    _uses(a.replace("{now_ms}", "").replace("{now}", ""), allowed, where)
        return self


class RedisEngine(Model):
    """A job engine's Redis layout and liveness evidence (see the module docstring)."""

    name: Name  # for messages and docs: "dramatiq"
    queues: EngineQueues
    job_time: JobTime | None = None
    holding: Holding
    heartbeat: Heartbeat | None = None
    lock: KeyTemplate | None = None  # a key per held job that exists while its holder lives: "bull:{queue}:{job}:lock"
    reason: Name = "worker_gone"  # the stuck reason of work held by a dead holder
    recovery: Recovery | None = None  # none: the engine cannot give work back (report only)
    max_held: int = Field(default=10_000, gt=0)  # cap on held jobs read per cycle
    # A beat further ahead of Redis' clock than this means a worker's clock is off: not judged.
    clock_tolerance: Duration = 60.0

    @model_validator(mode="after")
    def _check(self) -> RedisEngine:
        if (self.heartbeat is None) == (self.lock is None):
            raise ValueError("set exactly one liveness evidence: `heartbeat` (per worker or queue) or `lock` "
                             "(a key per held job)")
        _uses(self.lock, {"queue", "job"}, "lock")
        if self.heartbeat is not None:
            needed = placeholders(self.heartbeat.key)
            if self.heartbeat.type == "zset":
                needed |= placeholders(self.heartbeat.member)
            unbound = needed - self.holding.names()
            if unbound:
                raise ValueError(f"the heartbeat uses {', '.join('{' + u + '}' for u in sorted(unbound))}, which "
                                 "the holding does not name")
        recovery = self.recovery
        if recovery is not None and recovery.value == "job" and self.holding.type != "hash":
            raise ValueError("recovery.value `job` pushes the job a hash holding carries; other holdings hold ids")
        if recovery is not None and (recovery.push_to is None) != (self.holding.type == "lock"):
            raise ValueError("recovery.push_to is where held work goes back: needed, except for a lock holding "
                             "(its jobs never left their queue; their lock is deleted)")
        return self
