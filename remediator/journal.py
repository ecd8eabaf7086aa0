"""The journal: table `taskmedic_runs`, the single source of truth for what runs and what ran.

One row per (playbook, alert fingerprint, alert startsAt), guarded by a unique constraint and
written with ON CONFLICT DO NOTHING, so duplicate deliveries, Alertmanager retries and both
members of an HA pair collapse into one run. Any number of replicas share the table: a run is
claimed with FOR UPDATE SKIP LOCKED and held with a lease that its replica keeps renewing; a run
whose lease expired belongs to a replica that died, and is marked interrupted (then retried if
its playbook says that is safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import SecretStr

from remediator.alert import OUTCOMES, AlertInfo, Outcome

log = logging.getLogger("taskmedic.remediator.journal")

ACTED: list[Outcome] = ["succeeded", "failed", "interrupted"]  # outcomes that may have changed something
ACTED_SQL = ", ".join(map(repr, ACTED))
STATUSES = ("pending", "running", "done")

# Each statement is idempotent; they run in order, under a lock, at every start.
MIGRATIONS = (
    f"""create table if not exists taskmedic_runs (
        id bigserial primary key,
        playbook text not null,
        fingerprint text not null,
        starts_at timestamptz not null,
        alert_status text not null,
        labels jsonb not null default '{{}}',
        annotations jsonb not null default '{{}}',
        ends_at timestamptz,
        generator_url text not null default '',
        receiver text not null default '',
        group_key text not null default '',
        received_at timestamptz not null default now(),
        received_by text not null default '',
        status text not null default 'pending' check (status in {STATUSES!r}),
        outcome text check (outcome in {OUTCOMES!r}),
        dry_run boolean not null default false,
        attempts integer not null default 0,
        not_before timestamptz not null default now(),
        replica text,
        lease_until timestamptz,
        started_at timestamptz,
        finished_at timestamptz,
        duration_seconds double precision,
        steps jsonb not null default '[]',
        error text,
        history jsonb not null default '[]',
        constraint taskmedic_runs_once unique (playbook, fingerprint, starts_at))""",
    "create index if not exists taskmedic_runs_todo on taskmedic_runs (id) where status <> 'done'",
    "create index if not exists taskmedic_runs_recent on taskmedic_runs (playbook, started_at)",
    # Guards (reserved_at: when a run passed them and was allowed to act), the fair claim (the
    # oldest pending run of each playbook) and retention (the oldest finished runs). Done once:
    # ALTER TABLE would take an exclusive lock at every start even when there is nothing to add.
    f"""do $$ begin
        if not exists (select from pg_attribute where attrelid = 'taskmedic_runs'::regclass
                                                   and attname = 'reserved_at' and not attisdropped) then
            alter table taskmedic_runs add column reserved_at timestamptz;
            update taskmedic_runs set reserved_at = started_at
            where outcome in ({ACTED_SQL}) and started_at > now() - interval '1 day';
            create index taskmedic_runs_reserved on taskmedic_runs (playbook, reserved_at)
                where reserved_at is not null;
            create index taskmedic_runs_pending on taskmedic_runs (playbook, id) where status = 'pending';
            create index taskmedic_runs_finished on taskmedic_runs (finished_at) where status = 'done';
        end if;
    end $$""",
    # remediator.pause: one row per paused scope (a playbook, or "*" for all)
    """create table if not exists taskmedic_pauses (
        scope text primary key,
        paused_at timestamptz not null default now(),
        paused_by text not null default '',
        reason text not null default '',
        until timestamptz)""",
)

COLUMNS = ("id, playbook, fingerprint, starts_at, alert_status, labels, annotations, ends_at, generator_url, "
           "receiver, group_key, received_at, received_by, status, outcome, dry_run, attempts, replica, "
           "lease_until, started_at, reserved_at, finished_at, duration_seconds, steps, error, history")
# A run counts against cooldown and max_runs_per_hour from its reservation on, while it runs and
# after, unless it ended without acting (refused, skipped, dry run, suppressed).
COUNTED = f"reserved_at is not null and (outcome is null or outcome in ({ACTED_SQL}))"
PRUNE_BATCH = 1000  # finished runs deleted per statement by retention

# What counts as "the journal is unreachable": the webhook answers 503 and Alertmanager retries.
# A server-side error (read-only after a failover, disk full, ...) counts too: retrying later is right.
# So does a connection whose protocol broke mid-operation (a reply out of order from a failing
# server or proxy): asyncpg aborts it and raises InternalClientError ("cannot switch to state 12",
# "release() called on a free connection holder"); a fresh connection is the cure.
UNAVAILABLE: tuple[type[BaseException], ...] = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                                                asyncpg.InternalClientError)


class JournalUnavailable(Exception):
    """The journal database cannot be reached (or refused the write); nothing was recorded."""


@dataclass(frozen=True)
class NewRun:
    playbook: str
    alert: AlertInfo
    receiver: str = ""
    group_key: str = ""


@dataclass(frozen=True)
class Run:
    id: int
    playbook: str
    alert: AlertInfo
    attempts: int
    row: dict[str, Any]

    @classmethod
    def from_row(cls, row: Any) -> Run:
        alert = AlertInfo(fingerprint=row["fingerprint"], status=row["alert_status"], starts_at=row["starts_at"],
                          labels=row["labels"], annotations=row["annotations"], ends_at=row["ends_at"],
                          generator_url=row["generator_url"])
        return cls(id=row["id"], playbook=row["playbook"], alert=alert, attempts=row["attempts"], row=dict(row))


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


async def _codecs(conn: Any) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def _settle(future: asyncio.Future[int], result: int = 0, exception: BaseException | None = None) -> None:
    if future.done():  # its POST went away; the runs are journaled all the same
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)


def _attribute(batch: list[tuple[Sequence[NewRun], asyncio.Future[int]]],
               inserted: set[tuple[str, str, datetime]]) -> None:
    """Each created row counts as new for the first caller that carried it; the rest are duplicates."""
    for runs, future in batch:
        new = 0
        for run in runs:
            key = (run.playbook, run.alert.fingerprint, run.alert.starts_at)
            if key in inserted:
                inserted.discard(key)
                new += 1
        _settle(future, new)


class Journal:
    def __init__(self, dsn: SecretStr, replica: str, lease: float, pool_size: int = 10,
                 timeout: float = 10.0, recheck_after: float = 60.0) -> None:
        self.replica = replica
        self.lease = lease
        self.recheck_after = recheck_after
        self._dsn = dsn
        self._pool_size = pool_size
        self._timeout = timeout
        self._pool: Any = None
        self._lock = asyncio.Lock()
        self._waiting: list[tuple[Sequence[NewRun], asyncio.Future[int]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def pool(self) -> Any:
        """The pool, created and the table migrated on first success (retried on every call)."""
        if self._pool is not None:
            return self._pool
        async with self._lock:
            if self._pool is None:
                pool = await asyncpg.create_pool(
                    self._dsn.get_secret_value(), min_size=0, max_size=self._pool_size, init=_codecs,
                    timeout=self._timeout, command_timeout=self._timeout,
                    # synchronous_commit: a 2xx (and a claim) must survive a crash of the journal
                    # server, whatever its default says.
                    server_settings={"application_name": "taskmedic-remediator", "synchronous_commit": "on",
                                     "statement_timeout": str(int(self._timeout * 1000))})
                try:
                    await self._migrate(pool)
                except BaseException:
                    pool.terminate()
                    raise
                self._pool = pool
        return self._pool

    async def _migrate(self, pool: Any) -> None:
        async with pool.acquire() as conn, conn.transaction():
            # Two replicas starting at once would race on CREATE TABLE IF NOT EXISTS.
            await conn.execute("select pg_advisory_xact_lock(hashtext('taskmedic_runs migration'))")
            for statement in MIGRATIONS:
                await conn.execute(statement)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A journal connection; any failure to reach the journal becomes JournalUnavailable."""
        try:
            pool = await self.pool()
            async with pool.acquire() as conn:
                yield conn
        except UNAVAILABLE as e:
            raise JournalUnavailable(f"{type(e).__name__}: {e}") from e

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5)
            except UNAVAILABLE:  # TimeoutError is one of them
                pool.terminate()

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.fetchval("select 1")

    async def record(self, runs: Sequence[NewRun]) -> int:
        """Journal the runs; returns how many were new (not duplicates) once they are committed.

        Group commit: the runs of POSTs that arrive while a write is in flight go into the next
        write together, one statement and one commit for all of them, and each caller returns
        when the commit holding its runs is done. A failure that is not the journal being
        unreachable is retried caller by caller, so one bad payload fails only its own POST."""
        if not runs:
            return 0
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((runs, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        return await future

    async def _write_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                inserted = await self._insert([run for runs, _ in batch for run in runs])
            except JournalUnavailable as e:
                for _, future in batch:
                    _settle(future, exception=e)
                continue
            except Exception:  # not the journal being down: find whose runs it was
                await self._write_one_by_one(batch)
                continue
            _attribute(batch, inserted)

    async def _write_one_by_one(self, batch: list[tuple[Sequence[NewRun], asyncio.Future[int]]]) -> None:
        for runs, future in batch:
            try:
                _attribute([(runs, future)], await self._insert(list(runs)))
            except Exception as e:  # this caller's own failure
                _settle(future, exception=e)

    async def _insert(self, runs: list[NewRun]) -> set[tuple[str, str, datetime]]:
        """One statement and commit for these runs; the keys of the rows it created."""
        columns = list(zip(*[(r.playbook, r.alert.fingerprint, r.alert.starts_at, r.alert.status,
                              json.dumps(dict(r.alert.labels)), json.dumps(dict(r.alert.annotations)),
                              r.alert.ends_at, r.alert.generator_url, r.receiver, r.group_key) for r in runs],
                             strict=True))
        async with self.connection() as conn:
            rows = await conn.fetch(
                """insert into taskmedic_runs (playbook, fingerprint, starts_at, alert_status, labels, annotations,
                                               ends_at, generator_url, receiver, group_key, received_by)
                   select distinct on (p, f, s) p, f, s, st, l::jsonb, a::jsonb, e, g, r, k, $11
                   from unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
                               $7::timestamptz[], $8::text[], $9::text[], $10::text[])
                        as t(p, f, s, st, l, a, e, g, r, k)
                   on conflict on constraint taskmedic_runs_once do update
                   set status = 'pending', outcome = null, error = null, steps = '[]', replica = null,
                       lease_until = null, started_at = null, reserved_at = null, finished_at = null,
                       duration_seconds = null, not_before = now(),
                       history = taskmedic_runs.history || jsonb_build_array(jsonb_build_object(
                           'attempt', taskmedic_runs.attempts, 'outcome', taskmedic_runs.outcome,
                           'error', taskmedic_runs.error, 'finished_at', taskmedic_runs.finished_at,
                           'rechecked_by', $11::text))
                   -- (distinct: a batch may hold one alert twice, and a row can be updated once.)
                   -- A run that changed nothing (skipped, suppressed, refused) is looked at again when
                   -- the alert is delivered again, still firing, after recheck_after: an earlier alert
                   -- with the same labels (forged, or a cooldown) must not use up the real incident.
                   -- A run that may have acted is never run twice.
                   where taskmedic_runs.status = 'done'
                     and taskmedic_runs.outcome in ('skipped', 'suppressed', 'refused')
                     and excluded.alert_status = 'firing'
                     and taskmedic_runs.finished_at < now() - make_interval(secs => $12)
                   returning playbook, fingerprint, starts_at""", *columns, self.replica, self.recheck_after)
        return {(r["playbook"], r["fingerprint"], r["starts_at"]) for r in rows}

    async def claim(self, playbooks: Sequence[str]) -> Run | None:
        """Claim the next run, fairly: the oldest pending run of the playbook served least recently,
        so a storm of one playbook's alerts delays another playbook's run by a claim or two."""
        async with self.connection() as conn:
            row = await conn.fetchrow(
                f"""update taskmedic_runs set status = 'running', replica = $1, attempts = attempts + 1,
                        lease_until = now() + make_interval(secs => $2), started_at = now()
                    where id = (
                        select head.id from unnest($3::text[]) as p(name)
                        cross join lateral (
                            select id from taskmedic_runs
                            where status = 'pending' and playbook = p.name and not_before <= now()
                            order by id limit 1 for update skip locked) head
                        order by (select max(started_at) from taskmedic_runs where playbook = p.name)
                                 nulls first, head.id
                        limit 1)
                    returning {COLUMNS}""", self.replica, self.lease, list(playbooks))
        return Run.from_row(row) if row else None

    async def renew(self, run_id: int, attempt: int, steps: list[dict[str, Any]] | None = None) -> bool:
        """Extend our lease on this attempt of the run, recording its `steps` so far (what a files
        step removed, entry by entry); False when it is no longer ours (it was taken over, or
        settled, even if this replica has claimed it again since)."""
        async with self.connection() as conn:
            owned = await conn.fetchval(
                """update taskmedic_runs set lease_until = now() + make_interval(secs => $3),
                          steps = coalesce($5::text::jsonb, steps)
                   where id = $1 and replica = $2 and status = 'running' and attempts = $4 returning true""",
                run_id, self.replica, self.lease, attempt, None if steps is None else json.dumps(steps, default=str))
        return bool(owned)

    async def finish(self, run_id: int, attempt: int, outcome: Outcome, steps: list[dict[str, Any]],
                     error: str | None, dry_run: bool, duration: float) -> bool:
        """Record the outcome of this attempt; False when the run is no longer ours."""
        async with self.connection() as conn:
            done = await conn.fetchval(
                """update taskmedic_runs set status = 'done', outcome = $3, steps = $4::text::jsonb, error = $5,
                          dry_run = $6, duration_seconds = $7, finished_at = now(), lease_until = null
                   where id = $1 and replica = $2 and status = 'running' and attempts = $8 returning true""",
                run_id, self.replica, outcome, json.dumps(steps, default=str), error, dry_run, duration, attempt)
        return bool(done)

    async def requeue(self, run_id: int, delay: float) -> None:
        """Give a claimed run back untouched (its playbook is busy elsewhere): not an attempt."""
        async with self.connection() as conn:
            await conn.execute(
                """update taskmedic_runs set status = 'pending', replica = null, lease_until = null,
                          attempts = attempts - 1, not_before = now() + make_interval(secs => $3)
                   where id = $1 and replica = $2 and status = 'running'""", run_id, self.replica, delay)

    async def release(self, run_ids: Sequence[int]) -> None:
        """Expire our leases now (shutdown): the runs are settled as interrupted without waiting."""
        async with self.connection() as conn:
            await conn.execute("update taskmedic_runs set lease_until = now() - interval '1 second' "
                               "where id = any($1::bigint[]) and replica = $2 and status = 'running'",
                               list(run_ids), self.replica)

    async def recover(self, retry: Callable[[Run], bool], exclude: Sequence[int] = ()) -> list[tuple[Run, bool]]:
        """Settle runs whose lease expired: back to pending when `retry(run)`, else done/interrupted.
        `exclude`: this replica's own running runs (their heartbeat cancels them if it fails)."""
        async with self.connection() as conn, conn.transaction():
            rows = await conn.fetch(f"""select {COLUMNS} from taskmedic_runs
                                        where status = 'running' and lease_until < now()
                                          and not (id = any($1::bigint[]))
                                        order by id limit 100 for update skip locked""", list(exclude))
            settled = [(run, retry(run)) for run in map(Run.from_row, rows)]
            for run, again in settled:
                await self._interrupted(conn, run, again)
        return settled

    async def _interrupted(self, conn: Any, run: Run, again: bool) -> None:
        note = {"attempt": run.attempts, "replica": run.row["replica"], "outcome": "interrupted",
                "started_at": as_json(run.row)["started_at"], "noticed_by": self.replica}
        await conn.execute(
            """update taskmedic_runs set history = history || $2::text::jsonb, lease_until = null,
                   status = case when $3 then 'pending' else 'done' end,
                   outcome = case when $3 then null else 'interrupted' end,
                   finished_at = case when $3 then null else now() end,
                   error = case when $3 then null else $4 end,
                   replica = case when $3 then null else replica end
               where id = $1""",
            run.id, json.dumps([note]), again, f"lease expired: replica {run.row['replica']} stopped mid-run")

    async def reserve(self, run: Run, cooldown: float, max_runs_per_hour: int | None) -> str | None:
        """Check the run's guards and mark it as acting, atomically: None when it may act, else why not.

        Count and reservation happen in one transaction under the playbook's guard lock (a
        transaction-scoped advisory lock), so runs on any worker of any replica, exclusive or not,
        pass the guards one at a time and each sees the reservations made before it."""
        async with self.connection() as conn, conn.transaction():
            if cooldown or max_runs_per_hour is not None:
                await conn.execute("select pg_advisory_xact_lock(hashtextextended($1, 0))",
                                   f"taskmedic:guards:{run.playbook}")
            if cooldown and await conn.fetchval(
                    f"""select exists(select 1 from taskmedic_runs
                                      where playbook = $1 and fingerprint = $2 and id <> $3 and {COUNTED}
                                        and reserved_at > now() - make_interval(secs => $4))""",
                    run.playbook, run.alert.fingerprint, run.id, cooldown):
                return f"cooldown: this alert was acted on less than {cooldown:g}s ago"
            if max_runs_per_hour is not None:
                count = await conn.fetchval(
                    f"""select count(*) from taskmedic_runs
                        where playbook = $1 and id <> $2 and {COUNTED}
                          and reserved_at > now() - interval '1 hour'""", run.playbook, run.id)
                if count >= max_runs_per_hour:
                    return f"circuit open: {count} runs in the last hour (max_runs_per_hour {max_runs_per_hour})"
            mine = await conn.fetchval(
                """update taskmedic_runs set reserved_at = now()
                   where id = $1 and replica = $2 and status = 'running' and attempts = $3 returning true""",
                run.id, self.replica, run.attempts)
        return None if mine else "the run was taken over by another replica before it started"

    async def runs_last_hour(self) -> dict[str, int]:
        """Runs that acted (or are acting) in the last hour, per playbook (the circuit breaker's count)."""
        async with self.connection() as conn:
            rows = await conn.fetch(f"""select playbook, count(*) as n from taskmedic_runs
                                        where {COUNTED} and reserved_at > now() - interval '1 hour'
                                        group by playbook""")
        return {r["playbook"]: r["n"] for r in rows}

    async def prune(self, retention: float, batches: int) -> int:
        """Delete finished runs older than `retention` seconds, at most `batches` short statements
        of PRUNE_BATCH rows each (the journal stays responsive); returns how many were deleted."""
        deleted = 0
        for _ in range(batches):
            async with self.connection() as conn:
                n = len(await conn.fetch(
                    """delete from taskmedic_runs where id in (
                           select id from taskmedic_runs
                           where status = 'done' and finished_at < now() - make_interval(secs => $1)
                           order by finished_at limit $2 for update skip locked)
                       returning id""", retention, PRUNE_BATCH))
            deleted += n
            if n < PRUNE_BATCH:
                break
        return deleted

    @asynccontextmanager
    async def exclusive(self, playbook: str) -> AsyncIterator[bool]:
        """Try the playbook's advisory lock, held on its own connection until the `with` ends, so
        a replica that dies releases it with its connection."""
        async with self.connection() as conn:
            key = f"taskmedic:playbook:{playbook}"
            got = await conn.fetchval("select pg_try_advisory_lock(hashtextextended($1, 0))", key)
            try:
                yield bool(got)
            finally:
                if got:
                    with contextlib.suppress(*UNAVAILABLE):  # the connection is gone, and the lock with it
                        await conn.execute("select pg_advisory_unlock(hashtextextended($1, 0))", key)

    async def list_runs(self, playbook: str | None, outcome: str | None, status: str | None,
                        limit: int) -> list[dict[str, Any]]:
        async with self.connection() as conn:
            rows = await conn.fetch(
                f"""select {COLUMNS} from taskmedic_runs
                    where ($1::text is null or playbook = $1) and ($2::text is null or outcome = $2)
                      and ($3::text is null or status = $3)
                    order by id desc limit $4""", playbook, outcome, status, limit)
        return [as_json(dict(r)) for r in rows]

    async def get_run(self, run_id: int) -> dict[str, Any] | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(f"select {COLUMNS} from taskmedic_runs where id = $1", run_id)
        return as_json(dict(row)) if row else None
