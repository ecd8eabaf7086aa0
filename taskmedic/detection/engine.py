"""Judging a configured Redis job engine (`queues: {type: engine}`) from its own evidence: the
work each holder holds, and whether that holder is alive by the engine's own rule (its heartbeat
within `dead_after`, its per-job lock, its key not expired). The exporter counts what this
finds; the `engine` step gives back exactly the work it judges dead, re-judged under WATCH.

Held work whose holder's evidence is missing (with `missing: unknown`) or dated in the future
(the worker's clock is ahead of Redis') is *unknown*: never dead, never touched, and reported."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis

from taskmedic.config.engine import Heartbeat, RedisEngine, placeholders
from taskmedic.config.model import QueueSource
from taskmedic.connections import redis_now, redis_text
from taskmedic.wire import engine as wire

Verdict = Literal["alive", "dead", "unknown"]


@dataclass(frozen=True)
class HeldJob:
    """One job a holder holds, as read from Redis."""

    queue: str
    job: str  # its id
    key: str  # the holding key it is in (a lock holding: the queue's key)
    member: bytes  # what the holding lists: the set/list member or hash field
    worker: str | None = None
    job_text: str | None = None  # a hash holding's copy of the job itself, as JSON text

    def is_text(self) -> bool:
        """Whether what the holding lists is UTF-8: else its id, read with U+FFFD in place of the
        odd bytes, names other keys (its lock, its job) than the engine's."""
        try:
            self.member.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    def names(self) -> dict[str, str]:
        out = {"queue": self.queue, "job": self.job}
        if self.worker is not None:
            out["worker"] = self.worker
        return out


@dataclass(frozen=True)
class QueueState:
    depth: int
    oldest_at: float | None  # when its oldest waiting job was enqueued, when the engine says


@dataclass
class EngineState:
    now: float  # Redis' clock
    queues: dict[str, QueueState] = field(default_factory=dict)
    held: list[HeldJob] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    skew: float = 0.0  # how far ahead of Redis' clock the newest heartbeat is
    truncated: bool = False  # more held work than engine.max_held
    # keys of another Redis type than the engine's layout says (WRONGTYPE): skipped, not judged
    unreadable: list[str] = field(default_factory=list)

    def judged(self, verdict: Verdict) -> list[HeldJob]:
        return [h for h, v in zip(self.held, self.verdicts, strict=True) if v == verdict]

    @property
    def dead(self) -> list[HeldJob]:
        return self.judged("dead")

    @property
    def unknown(self) -> list[HeldJob]:
        return self.judged("unknown")


def engine_of(source: QueueSource) -> RedisEngine:
    assert source.engine is not None
    return source.engine


async def discover_queues(client: aioredis.Redis, source: QueueSource) -> list[str]:
    """The configured queue names, plus those the engine lists (a set) or marks (a key per queue)."""
    spec = engine_of(source).queues
    names = set(source.names)
    if source.discover and spec.listed_in is not None:
        names |= {redis_text(m) for m in await client.smembers(spec.listed_in)}
    if source.discover and spec.marker is not None:
        pattern = wire.parser(spec.marker)
        async for key in client.scan_iter(match=wire.glob(spec.marker), count=1000):
            found = wire.parse(pattern, key)
            if found is not None:
                names.add(found["queue"])
            if len(names) >= source.max_queues:
                break
    if spec.ignore is not None:
        ignored = re.compile(spec.ignore)
        names = {n for n in names if not ignored.search(n)}
    return sorted(names)[: source.max_queues]


def _readable(key: str, reply: Any, unreadable: list[str]) -> bool:
    """Whether a pipelined reply is data: an error (WRONGTYPE on one odd key) is noted and
    skipped, so one key does not blind the whole system's judgement."""
    if isinstance(reply, Exception):
        unreadable.append(f"{key}: {reply}")
        return False
    return True


async def read_queues(client: aioredis.Redis, engine: RedisEngine, queues: list[str],
                      unreadable: list[str]) -> dict[str, QueueState]:
    spec = engine.queues
    async with client.pipeline(transaction=False) as pipe:
        for q in queues:
            key = wire.render(spec.key, queue=q)
            if spec.type == "list":
                pipe.llen(key)
                pipe.lindex(key, 0 if spec.take_from == "left" else -1)
            else:
                pipe.zcard(key)
                pipe.zrange(key, 0, 0, withscores=True)
        replies = await pipe.execute(raise_on_error=False)
    read = {q: (replies[2 * i], replies[2 * i + 1]) for i, q in enumerate(queues)
            if _readable(wire.render(spec.key, queue=q), replies[2 * i], unreadable)}
    times = await _enqueue_times(client, engine, {q: head for q, (_, head) in read.items()})
    return {q: QueueState(int(depth), times.get(q)) for q, (depth, _) in read.items()}


async def _enqueue_times(client: aioredis.Redis, engine: RedisEngine, heads: dict[str, Any]) -> dict[str, float]:
    """When each queue's oldest waiting job was enqueued, by the engine's `job_time`."""
    spec = engine.job_time
    heads = {q: h for q, h in heads.items() if h}
    if spec is None or not heads:
        return {}
    if spec.source == "score":
        return {q: t for q, h in heads.items() if (t := wire.seconds(h[0][1], spec.unit)) is not None}
    members = {q: (h[0][0] if engine.queues.type == "zset" else h) for q, h in heads.items()}
    if spec.source == "member":
        raw = {q: (wire.json_object(m) or {}).get(spec.field or "") for q, m in members.items()}
    else:
        assert spec.key is not None and spec.field is not None
        async with client.pipeline(transaction=False) as pipe:
            for q, m in members.items():
                key = wire.render(spec.key, queue=q, job=redis_text(m))
                pipe.hget(key, spec.field if spec.source == "hash" else redis_text(m))
            values = [None if isinstance(v, Exception) else v for v in await pipe.execute(raise_on_error=False)]
        raw = dict(zip(members, values, strict=True))
        if spec.source == "hash_field":
            raw = {q: (wire.json_object(v) or {}).get(spec.field) if v else None for q, v in raw.items()}
    return {q: t for q, v in raw.items() if (t := wire.seconds(v, spec.unit)) is not None}


async def _holding_keys(client: aioredis.Redis, engine: RedisEngine, queues: list[str],
                        cap: int) -> tuple[list[dict[str, str]], bool]:
    """The names of every holding key there is (its worker and/or queue), at most `cap`, and
    whether there were more. A holding key exists only while it holds something, so more keys
    than `cap` is more held work than `cap`. SCAN may return a key twice: each is read once."""
    holding = engine.holding
    used = placeholders(holding.key)
    if "worker" not in used:
        return [{"queue": q} for q in queues], False
    if holding.workers_in is not None:
        workers = sorted(redis_text(w) for w in await client.smembers(holding.workers_in))
        if "queue" in used:
            pairs = [{"worker": w, "queue": q} for w in workers for q in queues]
            return pairs[:cap], len(pairs) > cap
        return [{"worker": w} for w in workers[:cap]], len(workers) > cap
    pattern = wire.parser(holding.key)
    found: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    async for key in client.scan_iter(match=wire.glob(holding.key), count=1000):
        names = wire.parse(pattern, key)
        if names is not None:
            found[tuple(sorted(names.items()))] = names
        if len(found) > cap:
            break
    keyed = [found[k] for k in sorted(found)]
    return keyed[:cap], len(keyed) > cap


async def read_held(client: aioredis.Redis, engine: RedisEngine, queues: list[str],
                    unreadable: list[str]) -> tuple[list[HeldJob], bool]:
    """Every job held now (at most engine.max_held), and whether there was more."""
    holding = engine.holding
    cap = engine.max_held
    if holding.type == "lock":
        return await _read_locked(client, engine, queues, unreadable)
    keyed, more_keys = await _holding_keys(client, engine, queues, cap)
    async with client.pipeline(transaction=False) as pipe:
        for names in keyed:
            key = wire.render(holding.key, **names)
            if holding.type == "set":
                pipe.smembers(key)
            elif holding.type == "list":
                pipe.lrange(key, 0, cap)
            else:
                pipe.hgetall(key)
        replies = await pipe.execute(raise_on_error=False)
    held: list[HeldJob] = []
    for names, reply in zip(keyed, replies, strict=True):
        key = wire.render(holding.key, **names)
        if not _readable(key, reply, unreadable):
            continue
        if holding.type == "hash":
            held += _hash_jobs(engine, key, names["worker"], reply)
        else:
            members = sorted(reply) if holding.type == "set" else reply
            held += [HeldJob(names["queue"], redis_text(m), key, m, names.get("worker")) for m in members]
    return held[:cap], len(held) > cap or more_keys


def _hash_jobs(engine: RedisEngine, key: str, worker: str, fields: dict[bytes, bytes]) -> list[HeldJob]:
    holding = engine.holding
    out = []
    for name, value in sorted(fields.items()):
        entry = wire.json_object(value) or {}
        text = wire.job_text(entry.get(holding.job_field or ""))
        job = wire.json_object(text) if text is not None else None
        queue = entry.get(holding.queue_field or "")
        if job is None or not isinstance(queue, str):
            continue  # not a job this engine wrote: never touched
        out.append(HeldJob(queue, str(job.get(holding.job_id_field, redis_text(name))), key, name, worker, text))
    return out


async def _read_locked(client: aioredis.Redis, engine: RedisEngine, queues: list[str],
                       unreadable: list[str]) -> tuple[list[HeldJob], bool]:
    """A lock holding: the queue's members that have their lock key (arq's in-progress key)."""
    spec, cap = engine.queues, engine.max_held
    async with client.pipeline(transaction=False) as pipe:
        for q in queues:
            key = wire.render(spec.key, queue=q)
            pipe.zrange(key, 0, cap) if spec.type == "zset" else pipe.lrange(key, 0, cap)
        members = await pipe.execute(raise_on_error=False)
    candidates = [(q, m) for q, ms in zip(queues, members, strict=True)
                  if _readable(wire.render(spec.key, queue=q), ms, unreadable) for m in ms]
    async with client.pipeline(transaction=False) as pipe:
        for q, m in candidates:
            pipe.exists(wire.render(engine.holding.key, queue=q, job=redis_text(m)))
        locked = await pipe.execute()
    held = [HeldJob(q, redis_text(m), wire.render(spec.key, queue=q), m)
            for (q, m), exists in zip(candidates, locked, strict=True) if exists]
    return held[:cap], len(held) > cap


async def _waiting_only(client: aioredis.Redis, engine: RedisEngine, queues: dict[str, QueueState],
                        held: list[HeldJob]) -> dict[str, QueueState]:
    """A lock holding's running jobs stay members of their queue (arq): they are not waiting, so
    they count neither in its depth nor as its oldest waiting job."""
    spec = engine.queues
    running: dict[str, set[bytes]] = defaultdict(set)
    for h in held:
        running[h.queue].add(h.member)
    busy = [q for q in queues if running[q]]
    async with client.pipeline(transaction=False) as pipe:
        for q in busy:  # enough of the consumed end to reach past every running member
            key, n = wire.render(spec.key, queue=q), len(running[q])
            if spec.type == "zset":
                pipe.zrange(key, 0, n, withscores=True)
            else:
                pipe.lrange(key, 0, n) if spec.take_from == "left" else pipe.lrange(key, -n - 1, -1)
        replies = await pipe.execute(raise_on_error=False)
    heads: dict[str, Any] = {}
    for q, reply in zip(busy, replies, strict=True):
        if isinstance(reply, Exception):
            continue  # its type changed since it was read: its oldest waiting job is not known
        if spec.type == "zset":
            waiting = [entry for entry in reply if entry[0] not in running[q]]
            heads[q] = waiting[:1]
        else:
            ordered = reply if spec.take_from == "left" else list(reversed(reply))
            heads[q] = next((m for m in ordered if m not in running[q]), None)
    times = await _enqueue_times(client, engine, heads)
    return {q: QueueState(max(s.depth - len(running[q]), 0), times.get(q) if q in heads else s.oldest_at)
            for q, s in queues.items()}


@dataclass(frozen=True)
class Evidence:
    """Where one holder's liveness is read: a lock key, or a heartbeat's key (and zset member)."""

    key: str
    member: str | None = None


def evidence_of(engine: RedisEngine, job: HeldJob) -> Evidence:
    names = job.names()
    if engine.lock is not None:
        return Evidence(wire.render(engine.lock, **names))
    beat = engine.heartbeat
    assert beat is not None
    member = wire.render(beat.member, **names) if beat.type == "zset" else None
    return Evidence(wire.render(beat.key, **names), member)


def ask(client: Any, engine: RedisEngine, ev: Evidence) -> Any:
    """The command that reads one holder's evidence: whether its lock or key exists, its zset
    score, or its hash field. On a pipeline it is queued; in WATCH mode it is awaited."""
    beat = engine.heartbeat
    if beat is None or beat.type == "key":
        return client.exists(ev.key)
    if beat.type == "zset":
        return client.zscore(ev.key, ev.member)
    if beat.type == "ttl":
        return client.pttl(ev.key)
    return client.hget(ev.key, beat.field)


async def read_evidence(client: aioredis.Redis, engine: RedisEngine,
                        evidence: Iterable[Evidence]) -> dict[Evidence, Any]:
    unique = list(dict.fromkeys(evidence))
    async with client.pipeline(transaction=False) as pipe:
        for ev in unique:
            ask(pipe, engine, ev)
        return dict(zip(unique, await pipe.execute(raise_on_error=False), strict=True))


@dataclass
class Absences:
    """When each `key` heartbeat was first seen missing, by Redis' clock: with `dead_after`, a key
    is death only once it has stayed missing that long. The exporter keeps one across cycles;
    the `engine` step watches for that long before it acts."""

    since: dict[str, float] = field(default_factory=dict)

    def judge(self, key: str, present: bool, now: float, dead_after: float | None) -> Verdict:
        if present:
            self.since.pop(key, None)
            return "alive"
        first = self.since.setdefault(key, now)
        return "dead" if dead_after is None or now - first >= dead_after else "alive"

    def pending(self, now: float, dead_after: float | None) -> float:
        """How long until a key seen missing, not yet for `dead_after`, would be death (0: none)."""
        if dead_after is None:
            return 0.0
        return max((first + dead_after - now for first in self.since.values()), default=0.0)


def verdict(engine: RedisEngine, raw: Any, now: float, absences: Absences | None = None,
            key: str = "") -> tuple[Verdict, float]:
    """What the evidence says of its holder, and how far its beat is ahead of `now`."""
    if isinstance(raw, Exception):
        return "unknown", 0.0  # its key has another type than the engine's (WRONGTYPE)
    beat = engine.heartbeat
    if beat is None:
        return ("alive" if raw else "dead"), 0.0
    if beat.type == "key":
        return (absences or Absences()).judge(key, bool(raw), now, beat.dead_after), 0.0
    if beat.type == "ttl":
        return _ttl_verdict(beat, raw)
    return _beat_verdict(beat, wire.seconds(raw, beat.unit), now, engine.clock_tolerance)


def _ttl_verdict(beat: Heartbeat, pttl: Any) -> tuple[Verdict, float]:
    """The time since the last beat is the expiry it set less what is left of it (Redis' clock)."""
    assert beat.expires_after is not None and beat.dead_after is not None
    left = int(pttl) if pttl is not None else -2
    if left == -2:
        return beat.missing, 0.0
    if left < 0:
        return "unknown", 0.0  # the key lost its expiry: not the engine's beat
    return ("dead" if beat.expires_after - left / 1000.0 > beat.dead_after else "alive"), 0.0


def _beat_verdict(beat: Heartbeat, at: float | None, now: float, tolerance: float) -> tuple[Verdict, float]:
    if at is None:
        return beat.missing, 0.0
    ahead = max(at - now, 0.0)
    if ahead > tolerance:
        return "unknown", ahead
    assert beat.dead_after is not None
    return ("dead" if now - at > beat.dead_after else "alive"), ahead


async def still_held(client: Any, engine: RedisEngine, job: HeldJob) -> bool:
    """Whether the job is still where it was read (it may have finished in between)."""
    kind = engine.holding.type
    if kind == "set":
        return bool(await client.sismember(job.key, job.member))
    if kind == "list":
        return await client.lpos(job.key, job.member) is not None
    if kind == "hash":
        return bool(await client.hexists(job.key, job.member))
    return bool(await client.exists(wire.render(engine.holding.key, **job.names())))


async def observe(client: aioredis.Redis, source: QueueSource, absences: Absences | None = None) -> EngineState:
    """The engine now: its queues, the work held, and each holder judged by its evidence. A job
    judged dead is read again afterwards, so one that finished in between is not counted."""
    absences = absences if absences is not None else Absences()
    engine = engine_of(source)
    state = EngineState(redis_now(await client.time()))
    queues = await discover_queues(client, source)
    state.queues = await read_queues(client, engine, queues, state.unreadable)
    held, state.truncated = await read_held(client, engine, queues, state.unreadable)
    if engine.holding.type == "lock":
        state.queues = await _waiting_only(client, engine, state.queues, held)
    evidence = [evidence_of(engine, h) for h in held]
    raw = await read_evidence(client, engine, evidence)
    now = redis_now(await client.time())
    keys = {ev.key for ev in evidence}
    absences.since = {k: t for k, t in absences.since.items() if k in keys}
    for job, ev in zip(held, evidence, strict=True):
        judged, ahead = verdict(engine, raw[ev], now, absences, ev.key)
        if not job.is_text():
            judged = "unknown"  # its evidence and the keys to write were named after another id
        if judged == "dead" and not await still_held(client, engine, job):
            continue  # it finished between the reads
        state.held.append(job)
        state.verdicts.append(judged)
        state.skew = max(state.skew, ahead)
    return state
