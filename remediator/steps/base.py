"""What every step type shares: the run context it acts in, its result, and how it stops a run.

A step type is one class in its own module (`steps/<key>.py`) with a `Spec` model for its YAML
section and one entry point, `run(spec, ctx)`. It raises `Refused` when a guard stops it (the
run's SQL is rolled back, outcome `refused`) and `StepFailed` when it cannot do its job (rolled
back, outcome `failed`); anything it returns is recorded in the journal as the step's result.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

import redis.asyncio as aioredis

from remediator.templating import Escape, RenderError, UnsafeValue, render, render_all, variables_read
from taskmedic.config.model import Model, System
from taskmedic.connections import Connections

S = TypeVar("S", bound="StepSpec")
Row = dict[str, Any]  # one output row of a step: a query's columns, or the item a filter kept


def first_value(row: Row) -> Any:
    return next(iter(row.values()), None)


class TargetRows(list[Row]):
    """What templates see as `targets`: the rows the detection rule found, and `targets.ids`."""

    @property
    def ids(self) -> list[Any]:
        return [row["id"] for row in self]


_TARGET_IDS = re.compile(r"\{\{\s*targets\.ids\s*\}\}")


def reads_targets(text: str) -> bool:
    return "targets" in variables_read(text)


class StepStopped(Exception):
    """The step ended the run; `detail` (what it saw) goes into the journal with the message."""

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail or {}


class StepFailed(StepStopped):
    """The step could not do its job; the run fails and its SQL is rolled back."""


class Refused(StepStopped):
    """A guard (max_rows, a path outside its root, a process that does not match) stopped the step."""


@dataclass
class StepResult:
    rows: int = 0  # rows/items/files/processes affected (or that would be, in a dry run)
    detail: dict[str, Any] = field(default_factory=dict)
    rows_returned: list[Row] | None = None  # rows for later steps (for_each, ids_from)
    kept: bool = True  # its effects stay even if the run's SQL is rolled back (redis, files, a batch ...)


async def abort_if_client_dies(conn: Any) -> None:
    """Make PostgreSQL notice a dead client within seconds, even in the middle of a long statement.

    Without it, a replica killed mid-run leaves its backend running the statement to the end
    (holding the rows it updated locked) before the transaction is rolled back, and the run's
    retry waits on those locks. Available from PostgreSQL 14; older servers keep the old behaviour.
    """
    if conn.get_server_version().major >= 14:
        await conn.execute("set local client_connection_check_interval = '2s'")


class Transactions:
    """One open transaction per system for the whole run, so all SQL of a run on one system
    commits or rolls back together. Created lazily, settled once by the engine."""

    def __init__(self, connections: Connections, statement_timeout: float) -> None:
        self._connections = connections
        self._timeout = statement_timeout
        self._open: dict[str, tuple[Any, Any, Any]] = {}  # system → (pool, connection, transaction)

    async def connection(self, name: str, system: System) -> Any:
        if name not in self._open:
            if system.database is None:
                raise StepFailed(f"system {name!r} has no database")
            pool = await self._connections.pg(system.database, system.timezone, self._timeout)
            conn = await pool.acquire()
            try:
                tx = conn.transaction()
                await tx.start()
                await abort_if_client_dies(conn)
            except BaseException:
                await pool.release(conn)
                raise
            self._open[name] = (pool, conn, tx)
        return self._open[name][1]

    async def settle(self, commit: bool) -> None:
        """Commit (or roll back) every open transaction and hand the connections back."""
        try:
            for _pool, _conn, tx in self._open.values():
                if commit:
                    await tx.commit()
                else:
                    await tx.rollback()
        finally:
            for pool, conn, _tx in self._open.values():
                await pool.release(conn)
            self._open.clear()

    async def abandon(self) -> None:
        """Roll back whatever is open, never raising: used when the run is already failing."""
        with contextlib.suppress(Exception):  # a broken connection rolls back on the server anyway
            await self.settle(commit=False)


@dataclass
class RunContext:
    playbook: str
    variables: dict[str, Any]
    dry_run: bool
    systems: Mapping[str, System]
    connections: Connections
    transactions: Transactions
    log: logging.Logger
    outputs: dict[str, list[Row]] = field(default_factory=dict)  # step name → its output rows
    # The running step's detail so far: a step whose work outlasts one await (files) fills it as
    # it goes, so a run cancelled mid-step (timeout, shutdown) still records what was done.
    progress: dict[str, Any] = field(default_factory=dict)

    def render(self, text: str, escape: Escape | None = None) -> str:
        try:
            return render(text, self.variables, escape)
        except RenderError as e:
            raise StepFailed(str(e)) from None
        except UnsafeValue as e:
            raise Refused(str(e)) from None

    def render_param(self, text: str) -> str | list[Any]:
        """A SQL parameter: `{{ targets.ids }}` alone is the array of ids itself (`id = any($1)`),
        anything else a rendered string."""
        if _TARGET_IDS.fullmatch(text.strip()) and isinstance(self.variables.get("targets"), TargetRows):
            return list(self.variables["targets"].ids)
        return self.render(text)

    def render_all(self, texts: list[str]) -> list[str]:
        try:
            return render_all(texts, self.variables)
        except RenderError as e:
            raise StepFailed(str(e)) from None

    def system(self, name: str) -> System:
        return self.systems[name]  # names were checked against `systems` when playbooks loaded

    def redis(self, name: str) -> aioredis.Redis:
        url = self.system(name).redis
        if url is None:
            raise StepFailed(f"system {name!r} has no redis")
        return self.connections.redis(url)


Need = Literal["database", "redis"]


class StepSpec(Model):
    """A step type's YAML section. Besides its own keys it says what it refers to — the systems
    it acts on, the earlier steps whose rows it reads — so checking a playbook needs no knowledge
    of the step types."""

    # Whether the step's result counts everything it affected, so 0 means it changed nothing (a
    # command or an HTTP call acts without a count of what it changed).
    counts_effects: ClassVar[bool] = True

    def systems(self) -> list[tuple[str, Need]]:
        """(system name, the connection it needs) for each configured system it acts on."""
        return []

    def reads_rows_of(self) -> dict[str, str]:
        """Its key → the earlier step whose output rows it reads (besides `for_each`, which every step has)."""
        return {}

    def sources_problem(self, for_each: str | None, earlier: Mapping[str, StepSpec]) -> str | None:
        """What is wrong with how it uses the earlier steps of `reads_rows_of` (they exist), if anything."""
        return None

    def free_text(self, field: str, rows_used: bool) -> bool:
        """Whether a template under `field` is text it shows rather than something it touches
        (`rows_used`: a later step acts on its output rows)."""
        return False


class StepType(Generic[S]):
    key: ClassVar[str]
    spec: ClassVar[type[StepSpec]]

    async def run(self, spec: S, ctx: RunContext) -> StepResult:
        raise NotImplementedError
