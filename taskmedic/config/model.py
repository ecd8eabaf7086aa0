"""Typed, frozen configuration shared by the exporter and the remediator: the systems (and
their detection rules), disks and backups. Each process adds its own section on top
(`taskmedic.config.ExporterConfig`, `remediator.config.RemediatorConfig`) and ignores the other's.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from taskmedic.config.engine import RedisEngine
from taskmedic.config.types import (
    Duration,
    Identifier,
    Model,
    Name,
    PostgresDsn,
    RedisUrl,
    Regex,
    TableName,
    parse_duration,
    redact,
)
from taskmedic.wire import kombu, rq

__all__ = ["Duration", "Identifier", "Model", "Name", "PostgresDsn", "RedisUrl", "Regex", "TableName",
           "parse_duration", "redact"]


class HttpLimits(Model):
    """How long a client may take to send a request, and how many may be connected at once.

    `header_timeout` runs from connecting (or from the previous response, on a kept-alive
    connection) to a complete request head, so it is also the idle keep-alive timeout."""

    header_timeout: Duration = Field(default=5.0, gt=0, le=300)
    body_timeout: Duration = Field(default=10.0, gt=0, le=600)
    max_connections: int = Field(default=512, ge=1)
    error_log_interval: Duration = Field(default=10.0, gt=0)  # at most one accept/refusal log line per interval


class LiveWorkers(Model):
    """How to tell a worker is alive, from Redis: its own key exists (`key_prefix` + name; RQ's
    `rq:worker:<name>` expires when the worker stops heartbeating), or it is in a set
    (`redis_set`, whose members may carry `member_prefix`)."""

    key_prefix: str | None = None
    redis_set: str | None = None
    member_prefix: str = ""

    @model_validator(mode="after")
    def _one(self) -> LiveWorkers:
        if (self.key_prefix is None) == (self.redis_set is None):
            raise ValueError("set exactly one of key_prefix (a key per live worker) or redis_set")
        return self


class HarborJobService(Model):
    """Harbor: an execution is stuck when one of its Running tasks' jobs is in progress in no
    live worker pool of the job service (taskmedic.harbor: gocraft/work's own liveness rule)."""

    namespace: str = Field(min_length=1)  # Harbor's default: {harbor_job_service_namespace}
    dead_after: Duration = Field(default=10.0, gt=0)  # gocraft's deadTime: a pool's heartbeat older is dead


class TaskArgument(Model):
    """Where a Celery task's arguments name the row it works on: a position in `args` (0-based)
    and/or a keyword in `kwargs` (a task may be sent either way)."""

    position: int | None = Field(default=None, ge=0)
    keyword: str | None = None

    @model_validator(mode="after")
    def _some(self) -> TaskArgument:
        if self.position is None and self.keyword is None:
            raise ValueError("set position (in args), keyword (in kwargs), or both")
        return self


class CeleryActive(Model):
    """A row is alive while a live Celery worker reports one of `tasks` working on it (`celery
    inspect active`, plus tasks a worker has reserved) or such a task waits in one of `queues`.
    No worker answering within `timeout` is *unknown*: nothing is judged stuck."""

    tasks: dict[str, TaskArgument] = Field(min_length=1)  # task name → where its args name the row
    column: Identifier = "id"  # the row's column those arguments carry
    broker: RedisUrl | None = None  # default: the system's `redis`
    queues: list[str] = Field(default_factory=lambda: ["celery"])
    timeout: Duration = 1.0


class StuckRule(Model):
    """One way a task can be stuck; exactly one kind of check per rule.

    - age check: `age` column older than `max_age` (constant) or `max_age_sql` (per row);
    - process check: `pid` column names a process that is gone (or does not match);
    - worker check: `worker` column names a worker missing from `live_workers`;
    - job service check (Harbor): `harbor_job_service`, see HarborJobService.
    - celery check: no live Celery worker reports a task on the row (`celery_active`).
    """

    status: str
    age: Identifier | None = None
    max_age: Duration | None = None
    max_age_sql: str | None = None
    pid: Identifier | None = None
    process_match: Regex | None = None
    engine: str | None = None  # with pid: the engine's executable (taskmedic.processes.judge_engine)
    owner: str | None = None  # with engine: the user (or uid) the engine runs as
    # with engine: judge progress, not presence: stuck when the engine is alive but has gained no
    # CPU time for this long (reason no_progress); its gone engines are left to process_gone
    progress_window: Duration | None = None
    worker: Identifier | None = None
    live_workers: LiveWorkers | None = None
    harbor_job_service: HarborJobService | None = None
    celery_active: CeleryActive | None = None
    min_age: Duration = 0.0
    where: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> StuckRule:
        kinds = [k for k, on in (("max_age", self.max_age is not None or self.max_age_sql is not None),
                                 ("pid", self.pid is not None),
                                 ("worker", self.worker is not None),
                                 ("harbor", self.harbor_job_service is not None),
                                 ("celery", self.celery_active is not None)) if on]
        if len(kinds) != 1:
            raise ValueError("set exactly one check: max_age (or max_age_sql) with age, pid, worker, "
                             "harbor_job_service or celery_active")
        if self.max_age is not None and self.max_age_sql is not None:
            raise ValueError("set max_age or max_age_sql, not both")
        if kinds[0] == "max_age" and self.age is None:
            raise ValueError("an age check needs `age`: the timestamp column to measure from")
        if kinds[0] == "worker" and self.live_workers is None:
            raise ValueError("a worker check needs `live_workers`")
        if (self.engine is not None or self.owner is not None) and self.pid is None:
            raise ValueError("engine and owner judge the process a `pid` column names; set pid")
        if self.owner is not None and self.engine is None:
            raise ValueError("owner needs engine")
        if kinds[0] == "harbor" and (self.where or self.age):
            raise ValueError("a harbor_job_service check reads Harbor's execution and task tables itself "
                             "(min_age counts from execution.start_time): drop `where` and `age`")
        if self.progress_window is not None and self.engine is None:
            raise ValueError("progress_window judges the engine's CPU time: set engine (and pid)")
        if self.min_age and self.age is None and kinds[0] != "harbor":
            raise ValueError("min_age needs `age`: the timestamp column to measure from")
        return self

    @property
    def kind(self) -> Literal["age", "pid", "worker", "harbor", "celery"]:
        if self.harbor_job_service is not None:
            return "harbor"
        if self.pid is not None:
            return "pid"
        if self.worker is not None:
            return "worker"
        if self.celery_active is not None:
            return "celery"
        return "age"


class TaskTable(Model):
    """Where a system keeps task state in PostgreSQL and what its states mean."""

    table: TableName | None = None
    query: str | None = None  # a SELECT that yields the columns below (a view of the tasks)
    status_column: Identifier = "status"
    id_column: Identifier = "id"  # what the remediator's targets are identified by (`targets.ids`)
    statuses: list[str] = Field(min_length=1)
    live: list[str] = Field(default_factory=list)  # not terminal: counted and aged every cycle
    age_columns: dict[str, Identifier] = Field(default_factory=dict)  # status → timestamp column
    stuck: dict[Name, StuckRule] = Field(default_factory=dict)
    history_interval: Duration = 300.0  # terminal statuses are counted this often
    max_rows_checked: int = Field(default=10_000, gt=0)  # cap on rows fetched for pid/worker checks
    # Live rows dated further in the future than this mean their timestamps are read in the wrong
    # zone (or a clock is off): ages cannot be trusted, and nothing is repaired.
    clock_tolerance: Duration = 300.0

    @model_validator(mode="after")
    def _consistent(self) -> TaskTable:
        if (self.table is None) == (self.query is None):
            raise ValueError("set exactly one of `table` or `query`")
        for label, values in (("live", self.live), ("age_columns", list(self.age_columns))):
            unknown = [s for s in values if s not in self.statuses]
            if unknown:
                raise ValueError(f"{label}: {', '.join(map(repr, unknown))} not in statuses")
        bad = {r: rule.status for r, rule in self.stuck.items() if rule.status not in self.live}
        if bad:
            raise ValueError("stuck: " + ", ".join(f"{r} checks status {s!r}, which is not in live"
                                                   for r, s in bad.items()))
        return self

    @property
    def terminal(self) -> list[str]:
        return [s for s in self.statuses if s not in self.live]


class QueueSource(Model):
    """Where a system keeps work in Redis."""

    type: Literal["celery", "rq", "list", "harbor", "engine"]
    names: list[str] = Field(default_factory=list)
    discover: bool = True  # find more queues (kombu bindings, rq:queues, harbor known_jobs, list globs)
    max_queues: int = Field(default=1000, gt=0)  # cardinality cap on discovered queues
    namespace: str | None = None  # harbor job service namespace
    # celery: the transport option `priority_steps` (kombu's default; 0 is always a step)
    priority_steps: kombu.PrioritySteps = Field(default_factory=lambda: list(kombu.DEFAULT_PRIORITY_STEPS))
    exchanges: list[str] = Field(default_factory=lambda: ["celery"])  # celery: kombu binding sets read
    visibility_timeout: Duration = 3600.0  # celery: unacked older than this are stuck
    max_unacked_scanned: int = Field(default=10_000, gt=0)  # celery: unacked read; rq: started entries per queue
    # rq: a started job's worker is gone when its key `rq:worker:<name>` has less than this left
    # (a busy worker's never drops below 60 s: a heartbeat was missed) and nothing subscribes to
    # its `rq:pubsub:<name>`; 45s suits RQ's default job_monitoring_interval of 30 s
    worker_ttl_below: Duration = Field(default=rq.DEFAULT_WORKER_TTL_BELOW, gt=0, lt=rq.BUSY_TTL_FLOOR)
    engine: RedisEngine | None = None  # engine: the engine's layout (profiles dramatiq, bullmq, sidekiq, arq)

    @model_validator(mode="after")
    def _namespace(self) -> QueueSource:
        if self.type == "harbor" and not self.namespace:
            raise ValueError("a harbor queue source needs `namespace`")
        if (self.type == "engine") != (self.engine is not None):
            raise ValueError("`engine` describes a queue source of type engine, and only one")
        return self


class System(Model):
    profile: str | None = None
    database: PostgresDsn | None = None
    redis: RedisUrl | None = None
    tasks: TaskTable | None = None
    queues: QueueSource | None = None
    interval: Duration = 15.0
    timeout: Duration = 10.0
    timezone: str | None = None  # session TimeZone: how naive timestamp columns are read

    @model_validator(mode="after")
    def _sources(self) -> System:
        if self.tasks is not None and self.database is None:
            raise ValueError("`tasks` needs `database`: a PostgreSQL DSN")
        if self.queues is not None and self.redis is None:
            raise ValueError("`queues` needs `redis`: a Redis URL")
        if self.database is None and self.redis is None:
            raise ValueError("a system needs `database` or `redis` (or both)")
        if self.tasks is not None:
            redis_rules = [r for r in self.tasks.stuck.values() if r.kind in ("worker", "harbor")]
            if redis_rules and self.redis is None:
                raise ValueError("a worker or job service check reads liveness from Redis: set `redis`")
            brokerless = [r for r in self.tasks.stuck.values()
                          if r.celery_active is not None and r.celery_active.broker is None]
            if brokerless and self.redis is None:
                raise ValueError("a celery_active check asks workers over the broker: set `redis` "
                                 "(or celery_active.broker)")
        return self


class Disk(Model):
    path: str
    interval: Duration = 30.0
    timeout: Duration = 5.0


class Backup(Model):
    path: str
    pattern: str = "*"
    in_progress: Duration = 60.0  # a file modified more recently is still being written
    interval: Duration = 60.0
    timeout: Duration = 10.0
    verify_data: bool = False  # zip: CRC-32 of every member, once per file version, in the background
    verify_bytes_per_second: int = Field(default=20 * 2**20, gt=0)  # I/O budget of every read-through
