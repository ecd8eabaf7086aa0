"""The SQL of "stuck": one predicate per rule, used by the exporter's count and by the remediator's
target lookup alike, so the two can never disagree about which rows a rule judges.

Ages are measured against the database's `now()` in the session TimeZone the system configures
(`timezone:`), never against the caller's clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from taskmedic.config.model import StuckRule, TaskTable


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def source_sql(tasks: TaskTable) -> str:
    if tasks.table is not None:
        return ".".join(quote_ident(p) for p in tasks.table.split("."))
    return f"({tasks.query})"


def rule_predicate(rule: StuckRule, params: list[Any]) -> str:
    """SQL that is true for a row this rule judges (age checks: stuck; others: a candidate whose
    pid or worker is then judged). Values are appended to `params` and referenced as $n."""
    parts: list[str] = []
    if rule.age is not None and rule.min_age:
        params.append(rule.min_age)
        parts.append(f"{quote_ident(rule.age)} < now() - make_interval(secs => ${len(params)})")
    if rule.kind == "age":
        assert rule.age is not None
        if rule.max_age is not None:
            params.append(rule.max_age)
            parts.append(f"{quote_ident(rule.age)} < now() - make_interval(secs => ${len(params)})")
        else:
            parts.append(f"{quote_ident(rule.age)} < now() - ({rule.max_age_sql})")
    if rule.where:
        parts.append(f"({rule.where})")
    return " and ".join(parts) or "true"


def judged_column(rule: StuckRule) -> str | None:
    """The column whose value a pid, worker or celery check judges; None for an age check."""
    if rule.celery_active is not None:
        return rule.celery_active.column
    return rule.pid if rule.kind == "pid" else rule.worker if rule.kind == "worker" else None


def _age_of(timestamp_sql: str) -> str:
    return f"extract(epoch from now() - {timestamp_sql})::float8"


def judged_sql(rule: StuckRule) -> str | None:
    """The text a pid, worker or celery check judges per row: the column's value; for an engine
    check, the PID and its task's start (epoch seconds) — `"<pid> <epoch>"`, read by
    `judges.pid_and_start` — since a process created after its task started is not its engine."""
    judged = judged_column(rule)
    if judged is None:
        return None
    column = f"{quote_ident(judged)}::text"
    if rule.engine is not None and rule.age is not None:
        start = f"extract(epoch from {quote_ident(rule.age)}::timestamptz)::text"
        return f"concat_ws(' ', {column}, {start})"
    return column


@dataclass(frozen=True)
class LiveQuery:
    """The SQL of the exporter's live query and how to read its rows back."""

    sql: str
    params: list[Any]
    rules: list[tuple[str, StuckRule]]  # column order of the rule results


def build_live_query(tasks: TaskTable) -> LiveQuery:
    """One UNION ALL branch per live status, each served by the status index: counts, the oldest
    and newest ages (a negative newest age is a row dated in the future: see `clock_skew`), and
    per rule either the stuck count (age) or the capped candidate values (pid, worker, celery)."""
    params: list[Any] = []
    rules = list(tasks.stuck.items())
    status = quote_ident(tasks.status_column)
    branches = []
    for i, st in enumerate(tasks.live):
        params.append(st)
        where = f"{status} = ${len(params)}"
        age_col = tasks.age_columns.get(st)
        oldest, newest = (_age_of(f"{fn}({quote_ident(age_col)})") for fn in ("min", "max")) if age_col \
            else ("null::float8", "null::float8")
        cols = [f"{i} as branch", "count(*) as n", f"{oldest} as oldest", f"{newest} as newest"]
        for j, (_, rule) in enumerate(rules):
            if rule.kind == "harbor":  # judged by taskmedic.detection.harbor, not in this query
                cols.append(f"null::bigint as r{j}")
                continue
            if rule.status != st:
                cols.append(f"null::bigint as r{j}" if rule.kind == "age" else f"null::text[] as r{j}")
                continue
            pred = rule_predicate(rule, params)
            judged = judged_column(rule)
            if judged is None:
                cols.append(f"count(*) filter (where {pred}) as r{j}")
            else:
                column = quote_ident(judged)
                cols.append(f"(array_agg({judged_sql(rule)}) filter (where {pred} and {column} is not null))"
                            f"[1:{tasks.max_rows_checked}] as r{j}")
        branches.append(f"select {', '.join(cols)} from {source_sql(tasks)} as src where {where}")
    return LiveQuery(" union all ".join(branches), params, rules)


def build_terminal_query(tasks: TaskTable) -> str:
    status = quote_ident(tasks.status_column)
    return (f"select {status}::text as status, count(*) as n from {source_sql(tasks)} as src "
            f"where {status} = any($1) group by 1")


def build_rows_query(tasks: TaskTable, rule: StuckRule, limit: int) -> tuple[str, list[Any]]:
    """The rows one rule judges, for the remediator: the id, status and age of each, plus the
    judged pid/worker column as `judged` (text, as the exporter reads it). Same predicate as
    `build_live_query`; oldest first, at most `limit`."""
    params: list[Any] = [rule.status]
    status = quote_ident(tasks.status_column)
    pred = rule_predicate(rule, params)
    cols = [f"{quote_ident(tasks.id_column)} as id", f"{status}::text as status"]
    age = rule.age or tasks.age_columns.get(rule.status)
    cols.append(f"extract(epoch from now() - {quote_ident(age)})::float8 as age_seconds" if age
                else "null::float8 as age_seconds")
    judged = judged_column(rule)
    if judged is not None:
        column = quote_ident(judged)
        cols += [f"{column}", f"{judged_sql(rule)} as judged"]
        pred += f" and {column} is not null"
    order = f" order by {quote_ident(age)}" if age else ""
    params.append(limit)
    sql = (f"select {', '.join(cols)} from {source_sql(tasks)} as src where {status} = $1 and {pred}"
           f"{order} limit ${len(params)}")
    return sql, params


def clock_skew(rows: list[Any]) -> float:
    """How far in the future (seconds) the newest live row of the live query's result is dated;
    0 when none is. Rows read in the wrong zone show up here, long before their ages mislead."""
    ahead = [-float(r["newest"]) for r in rows if r["newest"] is not None]
    return max([0.0, *ahead])


def clock_problem(skew: float, tasks: TaskTable) -> str | None:
    """Why ages cannot be trusted, or None: live rows dated beyond the tolerance in the future."""
    if skew <= tasks.clock_tolerance:
        return None
    return (f"live rows are dated {skew:.0f}s in the future (tolerance {tasks.clock_tolerance:g}s): their "
            "timestamps are read in the wrong zone or a clock is off; set the system's `timezone:` to the "
            "zone they are written in")
