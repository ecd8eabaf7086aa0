"""`engine` step: give back the work that dead holders hold in a Redis job engine described by
configuration (`queues: {type: engine}`), the way the engine's own recovery does it
(`recovery:` of its profile), then wait until the work is picked up again.

1. Judge with the exporter's code (`taskmedic.detection.engine`): the held jobs whose holder's
   own evidence says dead. More than `max_items`, a worker clock ahead of Redis', or more held
   work than can be read → refused before any write. Unknown holders are left alone.
2. Per holder (a worker, a job's lock, a queue's heartbeat), in one MULTI/EXEC with its holding
   (or, with `holding.job_key`, its jobs' own keys) and evidence keys WATCHed: the holder is
   judged again, and only if it is still dead are its jobs pushed back (`push_to`, `end`; the job
   itself for a hash holding), removed from where it held them, and the engine's further writes
   done (`also`, `per_worker`); an id whose job is gone (`push_if_in`) is only removed, as the
   engine's recovery drops it. A holder that beats again in between, or a job that finished, is
   left alone; a second run finds nothing: each job is given back once.
   With `watch`, holders that die within that long after are judged and given back the same way.
3. Verify: within `window`, every queue that got work back has some of it picked up (it left
   the queue); else the step fails. The given-back work stays given back (it is recorded).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, WatchError

from remediator.steps.base import Need, Refused, RunContext, StepFailed, StepResult, StepSpec, StepType
from remediator.steps.redis_plan import KEY_TYPES, wrong_types
from taskmedic.config.engine import RedisEngine, Write
from taskmedic.config.model import Duration, Name, QueueSource
from taskmedic.connections import redis_now
from taskmedic.detection import engine as detection
from taskmedic.detection.engine import Evidence, HeldJob
from taskmedic.wire import engine as wire

ATTEMPTS = 5
POLL = 0.2

class EngineSpec(StepSpec):
    system: Name
    window: Duration = Field(default=60.0, gt=0, le=600)  # the given-back work must be picked up within it
    max_items: int = Field(default=100, ge=0)  # more held jobs to give back → refused, nothing changed
    # after giving back, keep giving back the work of holders that die within this long
    watch: Duration = Field(default=0.0, ge=0, le=300)

    def systems(self) -> list[tuple[str, Need]]:
        return [(self.system, "redis")]


def _source(ctx: RunContext, spec: EngineSpec) -> QueueSource:
    source = ctx.system(spec.system).queues
    if source is None or source.engine is None:
        raise StepFailed(f"system {spec.system!r} has no `queues: {{type: engine}}` (profiles dramatiq, bullmq, "
                         "sidekiq, arq)")
    if source.engine.recovery is None:
        raise StepFailed(f"the {source.engine.name} engine of system {spec.system!r} has no `recovery`: "
                         "nothing to give its work back with")
    return source


def _args(write: Write, names: dict[str, str], now: float) -> list[str]:
    return [wire.render(a.replace("{now_ms}", str(int(now * 1000))).replace("{now}", f"{now:.6f}"), **names)
            for a in write.args]


def _writes(engine: RedisEngine, jobs: list[HeldJob], now: float, whole_worker: bool,
            dropped: list[HeldJob]) -> list[tuple[str, ...]]:
    """The commands that give these jobs (one holder's) back, as the engine's recovery does, and
    that only remove the `dropped` ones (their job is gone); the per-worker writes too when that
    is all the worker holds (`whole_worker`)."""
    recovery = engine.recovery
    assert recovery is not None
    out: list[tuple[str, ...]] = [_unhold(engine, job) for job in dropped]
    for job in jobs:
        names = job.names()
        if recovery.push_to is not None:
            value = job.job_text if recovery.value == "job" else job.job
            assert value is not None
            out.append(("RPUSH" if recovery.end == "right" else "LPUSH", wire.render(recovery.push_to, **names), value))
        out.append(_unhold(engine, job))
        out += [(w.command.upper(), *_args(w, names, now)) for w in recovery.also]
    worker = (jobs + dropped)[0].worker if jobs or dropped else None
    if worker is not None and whole_worker:
        out += [(w.command.upper(), *_args(w, {"worker": worker}, now)) for w in recovery.per_worker]
    return out


def _unhold(engine: RedisEngine, job: HeldJob) -> tuple[str, ...]:
    """The command that removes a job from where its holder held it."""
    member = job.member.decode("utf-8", "surrogateescape")
    kind = engine.holding.type
    if kind == "set":
        return ("SREM", job.key, member)
    if kind == "list":
        return ("LREM", job.key, "1", member)
    if kind == "hash":
        return ("HDEL", job.key, member)
    return ("DEL", wire.render(engine.holding.key, **job.names()))


async def _exhausted(pipe: Pipeline, engine: RedisEngine, job: HeldJob) -> bool:
    """Whether the engine's own recovery would give up on this job (its attempts counter)."""
    attempts = engine.recovery.attempts if engine.recovery is not None else None
    if attempts is None:
        return False
    key = wire.render(attempts.key, **job.names())
    raw = await pipe.hget(key, attempts.field) if attempts.field is not None else await pipe.get(key)
    try:
        return int(raw or 0) >= attempts.max
    except ValueError:
        return True  # a counter the engine did not write: not ours to judge


async def _gone(pipe: Pipeline, engine: RedisEngine, jobs: list[HeldJob]) -> list[HeldJob]:
    """The held ids whose job is no longer where the engine keeps it (`push_if_in`)."""
    where = engine.recovery.push_if_in if engine.recovery is not None else None
    if where is None:
        return []
    return [j for j in jobs if not await pipe.hexists(wire.render(where, **j.names()), j.job)]


@dataclass
class GivenBack:
    given: list[HeldJob] = field(default_factory=list)
    exhausted: list[HeldJob] = field(default_factory=list)  # at the engine's attempts limit: left alone
    dropped: list[HeldJob] = field(default_factory=list)  # ids whose job is gone: removed, not pushed back
    odd: list[str] = field(default_factory=list)  # holders left alone: a key to write has another type

    def add(self, more: GivenBack) -> None:
        """Count another holder's (or a later round's) outcome in; what is left alone, once."""
        self.given += more.given
        self.dropped += more.dropped
        self.exhausted += [h for h in more.exhausted if h not in self.exhausted]
        self.odd += [o for o in more.odd if o not in self.odd]


async def _odd_types(client: Any, writes: list[tuple[str, ...]]) -> list[str]:
    """The keys these writes would fail on (WRONGTYPE): MULTI/EXEC does not roll back, so a push
    failing after its job left its holder would lose it (the only copy of a Sidekiq job)."""
    return await wrong_types(client, {(w[1], KEY_TYPES[w[0].lower()]) for w in writes if w[0].lower() in KEY_TYPES})


async def _give_back(client: Any, pipe: Pipeline, engine: RedisEngine, holder: Evidence, jobs: list[HeldJob],
                     absences: detection.Absences, dry_run: bool) -> GivenBack:
    """Give back one dead holder's jobs, if it is still dead."""
    holding = engine.holding
    # A sorted set of every worker's beats changes with each beat of each worker: WATCHing it would
    # starve the step on a busy fleet. The beat is read after the WATCH, a moment before EXEC, and
    # a dead holder that comes back acts on its own holding keys, which are WATCHed.
    shared = engine.heartbeat is not None and engine.heartbeat.type == "zset"
    watched = set() if shared else {holder.key}
    if holding.type == "lock":
        watched |= {j.key for j in jobs} | {wire.render(holding.key, **j.names()) for j in jobs}
    elif holding.job_key is not None:  # the job's own key: its queue-wide holding changes all the time
        watched |= {wire.render(holding.job_key, **j.names()) for j in jobs}
    else:
        watched |= {j.key for j in jobs}
    await pipe.watch(*sorted(watched))
    now = redis_now(await pipe.time())
    raw = await detection.ask(pipe, engine, holder)
    judged, _ = detection.verdict(engine, raw, now, absences, holder.key)
    if judged != "dead":
        await pipe.reset()  # type: ignore[no-untyped-call]
        return GivenBack()
    still = [j for j in jobs if await detection.still_held(pipe, engine, j)]
    exhausted = [j for j in still if await _exhausted(pipe, engine, j)]
    # not watched: a job leaves it only when its holder, dead, acks it (or its queue is purged)
    gone = await _gone(pipe, engine, [j for j in still if j not in exhausted])
    still = [j for j in still if j not in exhausted and j not in gone]
    writes = _writes(engine, still, now, whole_worker=not exhausted, dropped=gone) if still or gone else []
    odd = await _odd_types(client, writes)
    if odd:
        await pipe.reset()  # type: ignore[no-untyped-call]
        return GivenBack(exhausted=exhausted, odd=odd)
    if dry_run or not (still or gone):
        await pipe.reset()  # type: ignore[no-untyped-call]
        return GivenBack(still, exhausted, gone)
    pipe.multi()  # type: ignore[no-untyped-call]
    for command in writes:
        pipe.execute_command(*command)
    await pipe.execute()
    return GivenBack(still, exhausted, gone)


async def _picked_up(client: Any, engine: RedisEngine, job: HeldJob) -> bool:
    """Whether a given-back job has left its queue (a worker took it, or it is done)."""
    recovery = engine.recovery
    assert recovery is not None
    if recovery.push_to is None:  # a lock holding: taken again = locked again, or gone from its queue
        locked = await client.exists(wire.render(engine.holding.key, **job.names()))
        queued = await client.zscore(job.key, job.member) if engine.queues.type == "zset" \
            else await client.lpos(job.key, job.member)
        return bool(locked) or queued is None
    value = job.job_text if recovery.value == "job" else job.job
    return await client.lpos(wire.render(recovery.push_to, **job.names()), value) is None


async def _head(client: Any, engine: RedisEngine, queue: str) -> Any:
    """The queue's oldest waiting member (the next one taken), or None when it is empty."""
    key = wire.render(engine.queues.key, queue=queue)
    if engine.queues.type == "zset":
        first = await client.zrange(key, 0, 0)
        return first[0] if first else None
    return await client.lindex(key, 0 if engine.queues.take_from == "left" else -1)


async def _unmoved(client: Any, engine: RedisEngine, given: list[HeldJob], window: float) -> list[str]:
    """Wait until each queue that got work back moves: some of that work is picked up, or the
    job that was next in line when it was given back is taken (a backlog ahead of work pushed
    on the far end); the queues that did not move."""
    by_queue: dict[str, list[HeldJob]] = defaultdict(list)
    for job in given:
        by_queue[job.queue].append(job)
    heads = {q: await _head(client, engine, q) for q in by_queue}
    deadline = time.monotonic() + window
    while by_queue:
        for queue, jobs in list(by_queue.items()):
            moved = heads[queue] is not None and await _head(client, engine, queue) != heads[queue]
            if moved or any([await _picked_up(client, engine, job) for job in jobs]):
                del by_queue[queue]
        if not by_queue or time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL)
    return sorted(by_queue)


def _by_queue(jobs: list[HeldJob]) -> dict[str, list[str]]:
    return {q: [h.job for h in jobs if h.queue == q][:50] for q in sorted({h.queue for h in jobs})}


class EngineStep(StepType[EngineSpec]):
    key: ClassVar[str] = "engine"
    spec: ClassVar[type[StepSpec]] = EngineSpec

    async def run(self, spec: EngineSpec, ctx: RunContext) -> StepResult:
        source = _source(ctx, spec)
        client = ctx.redis(spec.system)
        try:
            return await self._run(spec, ctx, source, client)
        except RedisError as e:
            raise StepFailed(f"redis: {type(e).__name__}: {e}") from None

    async def _run(self, spec: EngineSpec, ctx: RunContext, source: QueueSource, client: Any) -> StepResult:
        engine = detection.engine_of(source)
        absences = detection.Absences()
        detail: dict[str, Any] = {"system": spec.system, "engine": engine.name}
        done = await self._round(spec, ctx, client, source, absences, spec.max_items, detail)
        if spec.watch and done.given and not ctx.dry_run:
            await self._watch(spec, ctx, client, source, absences, done, detail)
        if done.exhausted:
            detail["exhausted"] = [h.job for h in done.exhausted][:50]
            if not done.given:
                raise Refused(f"{len(done.exhausted)} held job(s) reached the engine's attempts limit and are left "
                              "for a person (the engine itself would fail them)", detail)
        if done.dropped:
            detail["dropped"] = _by_queue(done.dropped)
        given = done.given
        detail["given_back"] = _by_queue(given)
        rows = [{"queue": h.queue, "job": h.job, "worker": h.worker} for h in given]
        if done.odd:
            detail["wrong_type"] = done.odd[:50]
            raise StepFailed(f"left the work of {len(done.odd)} dead holder(s) where it is: {done.odd[0]} (a write "
                             f"would fail inside MULTI/EXEC, which does not roll back the others)", detail)
        if given and not ctx.dry_run:
            started = time.monotonic()
            unmoved = await _unmoved(client, engine, given, spec.window)
            detail["waited_seconds"] = round(time.monotonic() - started, 3)
            if unmoved:
                raise StepFailed(f"work given back to {', '.join(unmoved)} was not picked up within {spec.window:g}s "
                                 "(no live worker takes it?)", detail)
        return StepResult(rows=len(given) + len(done.dropped), detail=detail, rows_returned=rows)

    async def _round(self, spec: EngineSpec, ctx: RunContext, client: Any, source: QueueSource,
                     absences: detection.Absences, budget: int, detail: dict[str, Any]) -> GivenBack:
        """Judge, check the guards (Refused before any write), and give back each dead holder's work."""
        engine = detection.engine_of(source)
        state = await self._observe(client, source, absences, spec.window)
        dead = state.dead
        detail.update({"held": len(state.held), "dead": [h.job for h in dead][:50], "unknown": len(state.unknown)})
        if state.unreadable:
            detail["unreadable"] = state.unreadable[:20]
        if state.skew > engine.clock_tolerance:
            raise Refused(f"a worker's heartbeat is {state.skew:.0f}s ahead of Redis' clock: liveness cannot be "
                          "judged", detail)
        if state.truncated:
            raise Refused(f"more than max_held {engine.max_held} held jobs: not all could be judged", detail)
        if len(dead) > budget:
            raise Refused(f"{len(dead)} held jobs to give back, more than max_items {spec.max_items}"
                          + (f" ({spec.max_items - budget} given back already)" if budget < spec.max_items else ""),
                          detail)
        holders: dict[Evidence, list[HeldJob]] = defaultdict(list)
        for job in dead:
            holders[detection.evidence_of(engine, job)].append(job)
        out = GivenBack()
        async with client.pipeline(transaction=True) as pipe:
            for holder, jobs in holders.items():
                out.add(await self._attempts(client, pipe, engine, holder, jobs, absences, ctx.dry_run))
        return out

    async def _watch(self, spec: EngineSpec, ctx: RunContext, client: Any, source: QueueSource,
                     absences: detection.Absences, done: GivenBack, detail: dict[str, Any]) -> None:
        """Keep giving back the work of holders that die within `watch` (a lost node's workers stop
        beating up to a beat apart, under one alert that will not be delivered again)."""
        deadline = time.monotonic() + spec.watch
        while time.monotonic() < deadline:
            await asyncio.sleep(min(POLL * 5, max(deadline - time.monotonic(), 0)))
            more: dict[str, Any] = {}
            try:
                late = await self._round(spec, ctx, client, source, absences,
                                         spec.max_items - len(done.given), more)
            except Refused as e:
                detail["watch_stopped"] = str(e)
                return
            done.add(late)

    @staticmethod
    async def _observe(client: Any, source: QueueSource, absences: detection.Absences,
                       window: float) -> detection.EngineState:
        """The engine judged; a `key` heartbeat seen missing is watched until it has been missing
        for its dead_after (or comes back) before its holders count as dead — refused when that
        is longer than `window`: the run would be cut off before it could judge."""
        engine = detection.engine_of(source)
        state = await detection.observe(client, source, absences)
        dead_after = engine.heartbeat.dead_after if engine.heartbeat is not None else None
        if absences.pending(state.now, dead_after) > 0 and dead_after is not None and dead_after > window:
            raise Refused(f"a missing {engine.name} heartbeat key is death only after {dead_after:g}s (dead_after), "
                          f"longer than this step's window {window:g}s: set the engine's heartbeat interval short "
                          "and dead_after to match (docs/engines.md)")
        while (wait := absences.pending(state.now, dead_after)) > 0:
            await asyncio.sleep(min(wait, POLL * 5))
            state = await detection.observe(client, source, absences)
        return state

    @staticmethod
    async def _attempts(client: Any, pipe: Pipeline, engine: RedisEngine, holder: Evidence, jobs: list[HeldJob],
                        absences: detection.Absences, dry_run: bool) -> GivenBack:
        for _ in range(ATTEMPTS):
            try:
                return await _give_back(client, pipe, engine, holder, jobs, absences, dry_run)
            except WatchError:
                await pipe.reset()  # type: ignore[no-untyped-call]
        raise StepFailed(f"the keys of {holder.key} kept changing; gave up after {ATTEMPTS} attempts")
