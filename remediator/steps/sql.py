"""`sql` step: one statement (or query) on a system's database, with bound parameters only.

The SQL text is the operator's and never templated; rendered values are bound as parameters.
They arrive as strings, and asyncpg refuses a `str` for, say, an `interval` parameter, so each
one is converted by PostgreSQL itself to the type it inferred for that parameter (`$1::text::T`)
— the same parser as a literal in psql would meet, with an error naming the parameter.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import asyncpg
from pydantic import Field, model_validator

from remediator.steps.base import (
    Need,
    Refused,
    RunContext,
    StepFailed,
    StepResult,
    StepSpec,
    StepType,
    abort_if_client_dies,
)
from remediator.templating import Template, is_templated
from taskmedic.config.model import Duration, Name

Param = Template | int | float | bool
_TEXT_TYPES = {"text", "varchar", "bpchar", "name", "unknown"}


def reject_templated_sql(sql: str | None) -> None:
    if sql is not None and is_templated(sql):
        raise ValueError("SQL text is never templated: write $1, $2 ... and put the values in `params`")


class SqlSpec(StepSpec):
    system: Name
    statement: str | None = None  # a change: bounded before it writes (keys, targets or batch_size)
    query: str | None = None  # a read: its first column is kept for later steps (files.ids_from)
    keys: str | None = None  # a read of the keys of the rows to change; the statement gets them as $1
    params: list[Param] = Field(default_factory=list)
    max_rows: int = Field(default=1000, ge=0)  # more affected (or returned) → refused, rolled back
    batch_size: int | None = Field(default=None, gt=0)  # bound as the last parameter, see docs
    max_rows_after_write: bool = False  # opt-in: an unbounded statement, counted only once it has run
    timeout: Duration | None = None

    @model_validator(mode="after")
    def _shape(self) -> SqlSpec:
        if (self.statement is None) == (self.query is None):
            raise ValueError("set exactly one of `statement` (a change) or `query` (a read)")
        for sql in (self.statement, self.query, self.keys):
            reject_templated_sql(sql)
        if self.statement is None:
            if self.keys is not None or self.batch_size is not None or self.max_rows_after_write:
                raise ValueError("keys, batch_size and max_rows_after_write apply to a `statement`")
            return self
        if self.keys is not None and self.batch_size is not None:
            raise ValueError("set one of `keys` or `batch_size`")
        n = len(self.params) + 1
        if self.keys is not None and not _uses(self.statement, 1):
            raise ValueError("with `keys` the statement's $1 is the array of keys the `keys` query selected: "
                             "use it (`where id = any($1)`) so it writes only those rows")
        if self.batch_size is not None and not _uses(self.statement, n):
            raise ValueError(f"with batch_size the statement must use ${n} (the batch size) to limit "
                             "the rows of one batch")
        if not (self.bounded or self.max_rows_after_write):
            raise ValueError(
                "a statement must be bounded before it writes, or max_rows would only be checked after every "
                "matching row was written and locked: select the keys of its rows with `keys: <query>` (at most "
                "max_rows + 1 are read; the statement gets them as $1), bind it to {{ targets.ids }}, or set "
                "batch_size; `max_rows_after_write: true` accepts the unbounded write")
        return self

    @property
    def bounded(self) -> bool:
        """Is the statement's write bounded by max_rows before it runs?"""
        on_targets = any(isinstance(p, str) and "targets.ids" in p for p in self.params)
        return self.keys is not None or self.batch_size is not None or on_targets

    def systems(self) -> list[tuple[str, Need]]:
        return [(self.system, "database")]

    def free_text(self, field: str, rows_used: bool) -> bool:
        return field == "params" and self.query is not None and not rows_used  # a read nothing acts on


def _uses(sql: str, n: int) -> bool:
    return re.search(rf"\${n}(?!\d)", sql) is not None


def as_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


async def _convert(conn: Any, position: int, typ: Any, value: str | list[Any]) -> Any:
    if not isinstance(value, str):  # `{{ targets.ids }}`: values read from the column itself
        return value
    if typ.schema == "pg_catalog" and typ.name in _TEXT_TYPES:
        return value
    type_sql = await conn.fetchval("select format_type($1::oid, null)", typ.oid)
    try:
        # type_sql comes from the catalog (format_type quotes it), never from the alert.
        return await conn.fetchval(f"select $1::text::{type_sql}", value)
    except asyncpg.PostgresError as e:
        raise StepFailed(f"parameter ${position} ({type_sql}): {e}") from None


async def bind(conn: Any, statement: Any, values: list[Any], raw: tuple[Any, ...] = ()) -> list[Any]:
    """Convert rendered string values to the types PostgreSQL inferred for the statement;
    `raw` values (keys read from the database) come first, as they are."""
    types = statement.get_parameters()
    if len(types) != len(raw) + len(values):
        raise StepFailed(f"the SQL has {len(types)} parameters but {len(raw) + len(values)} values were given")
    pairs = enumerate(zip(types[len(raw):], values, strict=True), start=len(raw) + 1)
    return [*raw, *[await _convert(conn, i, t, v) for i, (t, v) in pairs]]


async def prepare(conn: Any, sql: str, values: list[Any], raw: tuple[Any, ...] = (),
                  leading: bool = False) -> tuple[Any, list[Any]]:
    """The prepared statement and its converted arguments, reusable for repeated runs (a batched
    step prepares and converts once, not once per batch). `leading`: the SQL may use only the
    first few of the values."""
    try:
        statement = await conn.prepare(sql)
        if leading:
            values = values[:max(0, len(statement.get_parameters()) - len(raw))]
        return statement, await bind(conn, statement, values, raw)
    except asyncpg.PostgresError as e:
        raise StepFailed(f"{type(e).__name__}: {e}") from None


async def fetch_at_most(conn: Any, sql: str, values: list[Any], limit: int, leading: bool = False) -> list[Any]:
    """The first `limit` rows of a read, through a server-side cursor: the server produces no more
    than that, and memory stays bounded whatever the query would return. Needs a transaction."""
    statement, args = await prepare(conn, sql, values, leading=leading)
    try:
        cursor = await statement.cursor(*args)
        return list(await cursor.fetch(limit))
    except asyncpg.PostgresError as e:
        raise StepFailed(f"{type(e).__name__}: {e}") from None


async def run_prepared(statement: Any, args: list[Any]) -> tuple[list[Any], int]:
    """Run it; returns the rows and the count PostgreSQL reports."""
    try:
        rows = await statement.fetch(*args)
    except asyncpg.PostgresError as e:
        raise StepFailed(f"{type(e).__name__}: {e}") from None
    status = statement.get_statusmsg() or ""
    last = status.rsplit(" ", 1)[-1]
    return list(rows), int(last) if last.isdigit() else len(rows)


async def _set_timeout(conn: Any, timeout: float | None) -> None:
    if timeout is not None:
        await conn.execute("select set_config('statement_timeout', $1, true)", str(int(timeout * 1000)))


def _guard(count: int, spec: SqlSpec, detail: dict[str, Any]) -> None:
    if count > spec.max_rows:
        raise Refused(f"{count} rows would be affected, more than max_rows {spec.max_rows}; rolled back", detail)


class SqlStep(StepType[SqlSpec]):
    key: ClassVar[str] = "sql"
    spec: ClassVar[type[StepSpec]] = SqlSpec

    async def run(self, spec: SqlSpec, ctx: RunContext) -> StepResult:
        values = [ctx.render_param(as_text(p)) for p in spec.params]
        detail: dict[str, Any] = {"system": spec.system, "params": values}
        if spec.batch_size is not None:
            return await self._batched(spec, ctx, values, detail)
        conn = await ctx.transactions.connection(spec.system, ctx.system(spec.system))
        await _set_timeout(conn, spec.timeout)
        if spec.query is not None:
            rows = await fetch_at_most(conn, spec.query, values, spec.max_rows + 1)
            detail["rows"] = len(rows)
            if len(rows) > spec.max_rows:
                raise Refused(f"the query returned more than max_rows {spec.max_rows} rows; refused", detail)
            return StepResult(rows=len(rows), detail=detail, rows_returned=[dict(r) for r in rows], kept=False)
        raw: tuple[Any, ...] = ()
        if spec.keys is not None:
            keys = [r[0] for r in await fetch_at_most(conn, spec.keys, values, spec.max_rows + 1, leading=True)]
            detail["keys"] = len(keys)
            if len(keys) > spec.max_rows:
                raise Refused(f"more than max_rows {spec.max_rows} rows would be affected; refused before "
                              "anything was written", detail)
            raw = (keys,)
        _rows, count = await run_prepared(*await prepare(conn, spec.statement or "", values, raw,
                                                         leading=spec.keys is not None))
        detail["rows"] = count
        _guard(count, spec, detail)
        return StepResult(rows=count, detail=detail, kept=False)

    async def _batched(self, spec: SqlSpec, ctx: RunContext, values: list[Any],
                       detail: dict[str, Any]) -> StepResult:
        """Repeat the statement, each batch in its own short transaction, until a batch comes up
        short. Batches already committed stay committed: batching gives up all-or-nothing. In a
        dry run every batch runs in one transaction that is rolled back."""
        assert spec.batch_size is not None and spec.statement is not None
        system = ctx.system(spec.system)
        assert system.database is not None
        pool = await ctx.connections.pg(system.database, system.timezone)
        total = batches = 0
        async with pool.acquire() as conn:
            outer = conn.transaction()
            if ctx.dry_run:
                await outer.start()
                await abort_if_client_dies(conn)
            try:
                statement, args = await prepare(conn, spec.statement, [*values, str(spec.batch_size)])
                while True:
                    # The last batch may write one row beyond max_rows (then rolled back): enough to know.
                    limit = min(spec.batch_size, spec.max_rows - total + 1)
                    count = await self._one_batch(conn, spec, (statement, [*args[:-1], limit]), total, detail)
                    total, batches = total + count, batches + 1
                    if count < limit:
                        break
            finally:
                detail.update(rows=total, batches=batches)
                if ctx.dry_run:
                    await outer.rollback()
        return StepResult(rows=total, detail=detail)

    async def _one_batch(self, conn: Any, spec: SqlSpec, prepared: tuple[Any, list[Any]], done: int,
                         detail: dict[str, Any]) -> int:
        assert spec.batch_size is not None and spec.statement is not None
        async with conn.transaction():  # a savepoint inside the dry run's outer transaction
            await abort_if_client_dies(conn)
            await _set_timeout(conn, spec.timeout)
            _rows, count = await run_prepared(*prepared)
            if count > prepared[1][-1]:
                raise Refused(f"one batch affected {count} rows, more than its limit {prepared[1][-1]}: "
                              f"the statement must limit itself with ${len(prepared[1])}; rolled back", detail)
            _guard(done + count, spec, detail)
        return count
