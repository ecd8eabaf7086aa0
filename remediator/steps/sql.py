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

from remediator.steps.base import Refused, RunContext, StepFailed, StepResult, StepType, abort_if_client_dies
from remediator.templating import Template, is_templated
from taskmedic.config.model import Duration, Model, Name

Param = Template | int | float | bool
_TEXT_TYPES = {"text", "varchar", "bpchar", "name", "unknown"}


def reject_templated_sql(sql: str | None) -> None:
    if sql is not None and is_templated(sql):
        raise ValueError("SQL text is never templated: write $1, $2 ... and put the values in `params`")


class SqlSpec(Model):
    system: Name
    statement: str | None = None  # a change: rows affected are counted and guarded
    query: str | None = None  # a read: its first column is kept for later steps (files.ids_from)
    params: list[Param] = Field(default_factory=list)
    max_rows: int = Field(default=1000, ge=0)  # more affected (or returned) → refused, rolled back
    batch_size: int | None = Field(default=None, gt=0)  # bound as the last parameter, see docs
    timeout: Duration | None = None

    @model_validator(mode="after")
    def _shape(self) -> SqlSpec:
        if (self.statement is None) == (self.query is None):
            raise ValueError("set exactly one of `statement` (a change) or `query` (a read)")
        reject_templated_sql(self.statement)
        reject_templated_sql(self.query)
        if self.batch_size is not None:
            if self.statement is None:
                raise ValueError("batch_size applies to a `statement`")
            n = len(self.params) + 1
            if not re.search(rf"\${n}(?!\d)", self.statement):
                raise ValueError(f"with batch_size the statement must use ${n} (the batch size) to limit "
                                 "the rows of one batch")
        return self


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


async def bind(conn: Any, statement: Any, values: list[Any]) -> list[Any]:
    """Convert rendered string values to the types PostgreSQL inferred for the statement."""
    types = statement.get_parameters()
    if len(types) != len(values):
        raise StepFailed(f"the SQL has {len(types)} parameters but {len(values)} values were given")
    return [await _convert(conn, i, t, v) for i, (t, v) in enumerate(zip(types, values, strict=True), start=1)]


async def prepare(conn: Any, sql: str, values: list[Any]) -> tuple[Any, list[Any]]:
    """The prepared statement and its converted arguments, reusable for repeated runs (a batched
    step prepares and converts once, not once per batch)."""
    try:
        statement = await conn.prepare(sql)
        return statement, await bind(conn, statement, values)
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


async def execute(conn: Any, sql: str, values: list[Any]) -> tuple[list[Any], int]:
    """Run `sql` with bound values; returns the rows and the count PostgreSQL reports."""
    return await run_prepared(*await prepare(conn, sql, values))


async def _set_timeout(conn: Any, timeout: float | None) -> None:
    if timeout is not None:
        await conn.execute("select set_config('statement_timeout', $1, true)", str(int(timeout * 1000)))


def _guard(count: int, spec: SqlSpec, detail: dict[str, Any]) -> None:
    if count > spec.max_rows:
        raise Refused(f"{count} rows would be affected, more than max_rows {spec.max_rows}; rolled back", detail)


class SqlStep(StepType[SqlSpec]):
    key: ClassVar[str] = "sql"
    spec: ClassVar[type[Model]] = SqlSpec

    async def run(self, spec: SqlSpec, ctx: RunContext) -> StepResult:
        values = [ctx.render_param(as_text(p)) for p in spec.params]
        detail: dict[str, Any] = {"system": spec.system, "params": values}
        if spec.batch_size is not None:
            return await self._batched(spec, ctx, values, detail)
        conn = await ctx.transactions.connection(spec.system, ctx.system(spec.system))
        await _set_timeout(conn, spec.timeout)
        rows, count = await execute(conn, spec.statement or spec.query or "", values)
        detail["rows"] = count
        _guard(count, spec, detail)
        returned = [dict(r) for r in rows] if spec.query is not None else None
        return StepResult(rows=count, detail=detail, rows_returned=returned)

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
                prepared = await prepare(conn, spec.statement, [*values, str(spec.batch_size)])
                while True:
                    count = await self._one_batch(conn, spec, prepared, total, detail)
                    total, batches = total + count, batches + 1
                    if count < spec.batch_size:
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
            if count > spec.batch_size:
                raise Refused(f"one batch affected {count} rows, more than batch_size {spec.batch_size}: "
                              f"the statement must limit itself with ${len(prepared[1])}; rolled back", detail)
            _guard(done + count, spec, detail)
        return count
