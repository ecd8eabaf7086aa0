"""Benchmarks for the remediator, run by `python -m bench` after the exporter's (skip them
with `--skip-remediator`). Not tests: nothing here asserts a time; it measures and reports.

- webhook: the real `taskmedic-remediator` journaling every POST, against a bare aiohttp handler
  (and against its own app journaling with the worker off);
- repair: 100,000 stuck CAPE tasks failed by the engine in batches, against one bulk UPDATE;
- first SQL: alert POSTed → the playbook's first statement executed on the server;
- soak (60 s, loopback): real POSTs while 1,000 slow connections are held open and a
  10,000-alert storm of another playbook is being drained.

`python -m bench.remediator bare PORT | journal-only CONFIG PORT` serves a webhook baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
from aiohttp import web

from bench import exporter as bench  # it imports this module too: names are looked up when used
from deploy.local.servers import PostgresServer, free_port, running, tempdir, wait_http, wait_port
from remediator.config import load_setup
from remediator.server import make_app
from taskmedic import commandline
from taskmedic.config.model import HttpLimits
from tests.polling import wait_until
from tests.remediator.kit import AUTH, TOKEN, alert, execute, payload

T = TypeVar("T")

HEADERS = {**AUTH, "Content-Type": "application/json"}
WARMUP = 200  # POSTs before each measured burst, not counted
LOAD_CAP = 300.0  # seconds: a burst that takes longer is cut short (and fails its count check)
ALERT_INTERVAL = 0.05  # seconds between the alerts of the first-SQL benchmark
WAIT = 180.0  # seconds to wait for runs or marks to appear
JOURNAL, JOURNAL_ONLY, MARKS = "rem_journal", "rem_journal_only", "rem_marks"

# One playbook for every alert of the webhook and first-SQL benchmarks: its first statement
# stamps the server clock. Not exclusive: each alert's run stands alone.
MARK_BOOK = """name: bench-first-statement
match: {alertname: TaskmedicStuckTasks, system: cape}
exclusive: false
steps:
  - name: mark
    sql:
      system: cape
      statement: "insert into bench_marks (fingerprint, at) values ($1, clock_timestamp())"
      params: ["{{ alert.fingerprint }}"]
      max_rows: 1
      max_rows_after_write: true
"""

# The shipped CAPE playbook's repair, limited with the batch size. Each row stamps the moment it
# is updated (just before its row lock is taken): clock_timestamp(), where CAPE's own playbook
# writes localtimestamp.
REPAIR = ("update tasks set status = 'failed_analysis', completed_on = clock_timestamp() where id in (select id "
          "from tasks where status = 'pending' and added_on < localtimestamp - $1::interval limit $2)")
STUCK = "status = 'pending' and added_on < localtimestamp - interval '1 day'"
BULK = f"update tasks set status = 'failed_analysis', completed_on = clock_timestamp() where {STUCK}"
# Per transaction that changed rows (its rows share xmin): from its first row update to its commit,
# which is how long it held row locks. Needs track_commit_timestamp (PG_OPTIONS).
LOCK_HOLD = """select extract(epoch from max(pg_xact_commit_timestamp(xmin) - first)) * 1000, count(*) from (
    select xmin, min(completed_on)::timestamptz as first from tasks where status = 'failed_analysis' group by xmin) t"""
PG_OPTIONS = "-c track_commit_timestamp=on"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--webhook-requests", type=int, default=3000)
    p.add_argument("--webhook-concurrency", type=int, default=16)
    p.add_argument("--repair-rows", type=int, default=100_000)
    p.add_argument("--repair-history", type=int, default=1_000_000)
    p.add_argument("--repair-batch", type=int, default=1000)
    p.add_argument("--repair-rounds", type=int, default=3)
    p.add_argument("--first-sql-alerts", type=int, default=200)


def measure(tmp: Path, pg: PostgresServer, args: argparse.Namespace) -> dict[str, float]:
    work = tmp / "remediator"
    work.mkdir(exist_ok=True)
    out = {"requests": float(args.webhook_requests), "concurrency": float(args.webhook_concurrency),
           "repair_rows": float(args.repair_rows), "repair_history": float(args.repair_history),
           "repair_batch": float(args.repair_batch),
           "repair_rounds": float(args.repair_rounds), "alerts": float(args.first_sql_alerts)}
    print("  webhook, first SQL ...", flush=True)
    out |= bench_webhook(work, pg, args)
    print("  repair ...", flush=True)
    out |= bench_repair(work, pg, args)
    print("  soak ...", flush=True)
    out |= bench_soak(work, pg)
    return out


# --- webhook ---------------------------------------------------------------------------------

def bodies(prefix: str, n: int) -> list[bytes]:
    """Alertmanager payloads of one alert each, every one with a new fingerprint."""
    return [json.dumps(payload(alert(fingerprint=f"{prefix}-{i:05d}"))).encode() for i in range(n)]


async def timed(aw: Awaitable[T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    result = await aw
    return result, time.perf_counter() - t0


def burst(url: str, prefix: str, n: int, concurrency: int) -> dict[str, float]:
    """POST `n` payloads, `concurrency` in flight at all times; the rate and latencies."""
    sent = bodies(prefix, n)
    latencies, elapsed = asyncio.run(timed(bench.hammer(url, LOAD_CAP, math.inf, concurrency, sent, HEADERS)))
    assert len(latencies) == n, f"only {len(latencies)} of {n} POSTs answered in {LOAD_CAP:g}s"
    return {"rate": n / elapsed, "p99_ms": bench.p99(latencies) * 1000, "p50_ms": statistics.median(latencies) * 1000}


def named(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in values.items()}


def load(url: str, prefix: str, args: argparse.Namespace, settle: Callable[[str], None] | None = None
         ) -> dict[str, float]:
    """WARMUP POSTs (then `settle(their prefix)`), then the measured burst; results named `prefix`."""
    warm = f"warm-{prefix}"
    burst(url, warm, WARMUP, args.webhook_concurrency)
    if settle is not None:
        settle(warm)
    return named(prefix, burst(url, prefix, args.webhook_requests, args.webhook_concurrency))


async def bare_alerts(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"journaled": 0, "duplicates": 0, "unmatched": 0})


def bare_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/alerts", bare_alerts)
    return app


def remediator_config(tmp: Path, pg: PostgresServer, cape_db: str, journal: str, *playbooks: str,
                      **extra: Any) -> Path:
    """Shipped defaults (4 workers, 1 s poll, 30 s lease), a bearer token, the playbooks."""
    books = [tmp / f"{journal}-{cape_db}.playbook{i}.yml" for i in range(len(playbooks))]
    for book, text in zip(books, playbooks, strict=True):
        book.write_text(text)
    settings = {"journal": pg.dsn(journal), "playbooks": [str(b) for b in books], "auth": {"bearer_token": TOKEN},
                **extra}
    path = tmp / f"{journal}-{cape_db}.yml"
    path.write_text(bench.cape_config(pg, cape_db) + "remediator: " + json.dumps(settings) + "\n")
    return path


def wait_count(pg: PostgresServer, db: str, sql: str, n: int) -> None:
    wait_until(lambda: int(pg.psql(sql, db=db)), WAIT, f"{n} from {sql}", done=lambda got: got >= n)


def wait_runs(pg: PostgresServer, prefix: str, n: int) -> None:
    wait_count(pg, JOURNAL, f"select count(*) from taskmedic_runs where fingerprint like '{prefix}-%' "
                            "and status = 'done'", n)
    failed = pg.psql(f"select count(*) from taskmedic_runs where fingerprint like '{prefix}-%' "
                     "and outcome <> 'succeeded'", db=JOURNAL)
    assert failed == "0", f"{failed} {prefix} runs did not succeed"


def executed(pg: PostgresServer, prefix: str, load_end: float) -> dict[str, float]:
    """How long after the last POST the burst's runs were all done, and their execution rate."""
    first, last = pg.psql(f"select extract(epoch from min(received_at)), extract(epoch from max(finished_at)) "
                          f"from taskmedic_runs where fingerprint like '{prefix}-%'", db=JOURNAL).split("|")
    count = int(pg.psql(f"select count(*) from taskmedic_runs where fingerprint like '{prefix}-%'", db=JOURNAL))
    return {"drain_s": max(float(last) - load_end, 0.0), "runs_per_s": count / (float(last) - float(first))}


def bench_webhook(tmp: Path, pg: PostgresServer, args: argparse.Namespace) -> dict[str, float]:
    """The same load on a bare handler, on the remediator's app journaling only (no worker), and on
    the real process; then, on the real process, alerts one at a time (first SQL)."""
    for db in (JOURNAL, JOURNAL_ONLY, MARKS):
        pg.psql(f"create database {db}")
    pg.psql("create table bench_marks (fingerprint text not null, at timestamptz not null)", db=MARKS)
    out = baseline(tmp, "bare", ["bare"], args)
    out |= baseline(tmp, "journal", ["journal-only", str(remediator_config(tmp, pg, MARKS, JOURNAL_ONLY, MARK_BOOK))],
                    args)
    return out | bench_real(tmp, pg, args)


def baseline(tmp: Path, prefix: str, argv: list[str], args: argparse.Namespace) -> dict[str, float]:
    """A baseline server (`serve_baseline` in a child process) under the load."""
    port = free_port()
    with running([sys.executable, "-m", "bench.remediator", *argv, str(port)], tmp / f"{prefix}.log"):
        wait_port(port)  # the journal-only app listens once its journal answered
        return load(f"http://127.0.0.1:{port}/alerts", prefix, args)


def bench_real(tmp: Path, pg: PostgresServer, args: argparse.Namespace) -> dict[str, float]:
    """The real `taskmedic-remediator`: the load while its workers execute what it journals."""
    config = remediator_config(tmp, pg, MARKS, JOURNAL, MARK_BOOK)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "remediator", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
                 tmp / "remediator.log"):
        wait_http(f"{base}/readyz")
        out = load(f"{base}/alerts", "taskmedic", args, lambda warm: wait_runs(pg, warm, WARMUP))
        load_end = time.time()
        wait_runs(pg, "taskmedic", args.webhook_requests)
        out |= executed(pg, "taskmedic", load_end)
        out |= first_sql(pg, f"{base}/alerts", args.first_sql_alerts)
    return out


# --- alert → first SQL -----------------------------------------------------------------------

async def paced(url: str, prefix: str, n: int) -> dict[str, float]:
    """POST one alert every ALERT_INTERVAL; each fingerprint's send time (time.time())."""
    sent: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:
        for body, fingerprint in zip(bodies(prefix, n), (f"{prefix}-{i:05d}" for i in range(n)), strict=True):
            sent[fingerprint] = time.time()
            async with session.post(url, data=body, headers=HEADERS) as r:
                assert r.status == 200, await r.text()
            await asyncio.sleep(max(sent[fingerprint] + ALERT_INTERVAL - time.time(), 0))
    return sent


def first_sql(pg: PostgresServer, url: str, n: int) -> dict[str, float]:
    """The playbook's first statement stamps clock_timestamp(): the same host clock as time.time()."""
    sent = asyncio.run(paced(url, "first", n))
    wait_count(pg, MARKS, "select count(*) from bench_marks where fingerprint like 'first-%'", n)
    marks = pg.psql("select fingerprint, extract(epoch from at) from bench_marks where fingerprint like 'first-%'",
                    db=MARKS)
    latencies = [float(at) - sent[fp] for fp, at in (line.split("|") for line in marks.splitlines())]
    return {"first_sql_p99_ms": bench.p99(latencies) * 1000, "first_sql_p50_ms": statistics.median(latencies) * 1000,
            "first_sql_max_ms": max(latencies) * 1000}


# --- repair ----------------------------------------------------------------------------------

def repair_book(batch: int, rows: int) -> str:
    return ("name: bench-fail-stuck-pending\n"
            "match: {alertname: TaskmedicStuckTasks, system: cape, reason: pending_too_long}\n"
            "steps:\n  - name: fail stuck pending tasks\n    sql:\n      system: cape\n"
            f"      statement: {json.dumps(REPAIR)}\n"
            "      params: [\"{{ labels.older_than | default('1 hour') }}\"]\n"
            f"      batch_size: {batch}\n      max_rows: {rows}\n")


def seed_stuck(pg: PostgresServer, db: str, stuck: int, history: int) -> None:
    """CAPE's tasks: `history` reported, 1,000 live (added hours ago) and `stuck` pending for 3 days."""
    bench.seed_cape(pg, db, history)
    pg.psql(bench.INSERT.format(n=stuck, status="pending", added="localtimestamp - interval '3 days'",
                                started="null"), db=db)
    pg.psql("vacuum analyze tasks", db=db)


def copy_database(pg: PostgresServer, source: str, target: str, attempts: int = 20) -> None:
    """An exact copy; retried while autovacuum is connected to the source."""
    for attempt in range(attempts):
        try:
            pg.psql(f"create database {target} template {source}")
            return
        except subprocess.CalledProcessError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


Work = Callable[[Any], Awaitable[int]]  # given a connection, repairs; returns the rows it changed


async def repair(dsn: str, work: Work) -> dict[str, float]:
    """`work` timed on a warm copy after a checkpoint; then its longest row-lock hold."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("checkpoint")
        await conn.fetchval("select count(*) from tasks")
        rows, elapsed = await timed(work(conn))
        lock_ms, transactions = await conn.fetchrow(LOCK_HOLD)
        left = await conn.fetchval(f"select count(*) from tasks where {STUCK}")
        live = await conn.fetchval("select count(*) from tasks where status in ('pending', 'running')")
    finally:
        await conn.close()
    assert left == 0 and live == 1000, (left, live)
    return {"s": elapsed, "rows": rows, "lock_ms": float(lock_ms), "transactions": transactions}


async def bulk(conn: Any) -> int:
    return int((await conn.execute(BULK)).split()[-1])


def batch_loop(batch: int) -> Work:
    """The engine's batches without the engine: one prepared statement, a transaction per batch."""
    async def run(conn: Any) -> int:
        statement = await conn.prepare(REPAIR)
        total, count = 0, batch
        while count == batch:
            async with conn.transaction():
                await statement.fetch(timedelta(days=1), batch)
                count = int(statement.get_statusmsg().split()[-1])
            total += count
        return total
    return run


def engine(config: Path) -> Work:
    """The engine in-process, as a worker runs it (on its own connections)."""
    setup = load_setup(str(config))

    async def run(_conn: Any) -> int:
        report = await execute(setup, {"older_than": "1 day"})
        assert report.outcome == "succeeded", report
        return int(report.steps[0].rows)
    return run


def bench_repair(tmp: Path, pg: PostgresServer, args: argparse.Namespace) -> dict[str, float]:
    """The same stuck tasks repaired by one bulk UPDATE, a plain batch loop and the engine, each on
    a fresh copy, for a few rounds (the order rotating); median times, longest lock holds."""
    assert pg.psql("show track_commit_timestamp") == "on", f"start PostgreSQL with {PG_OPTIONS}"
    seed_stuck(pg, "repair_seed", args.repair_rows, args.repair_history)
    config = remediator_config(tmp, pg, "repair_engine", JOURNAL, repair_book(args.repair_batch, args.repair_rows))
    works = {"bulk": bulk, "loop": batch_loop(args.repair_batch), "engine": engine(config)}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in works}
    for i in range(args.repair_rounds):
        for name in [*works][i % len(works):] + [*works][:i % len(works)]:
            runs[name].append(repair_copy(pg, "repair_seed", name, works[name]))
            assert runs[name][-1]["rows"] == args.repair_rows, (name, runs[name][-1])
    pg.psql("drop database repair_seed")
    out: dict[str, float] = {}
    for name, results in runs.items():
        out |= {f"{name}_s": statistics.median(r["s"] for r in results),
                f"{name}_lock_ms": max(r["lock_ms"] for r in results),
                f"{name}_transactions": results[-1]["transactions"]}
    return {**out, "ratio": out["engine_s"] / out["bulk_s"]}


def repair_copy(pg: PostgresServer, seed: str, name: str, work: Work) -> dict[str, float]:
    """`work` on database repair_<name>, a fresh copy of `seed` (dropped after)."""
    copy_database(pg, seed, f"repair_{name}")
    try:
        return asyncio.run(repair(pg.dsn(f"repair_{name}"), work))
    finally:
        pg.psql(f"drop database repair_{name}")


# --- report ----------------------------------------------------------------------------------

# --- soak: slow connections and a storm ------------------------------------------------------

SOAK_SECONDS = 60.0  # the whole soak, from the first slow connection to the last probe
SOAK_SLOW = 1000  # connections that send a header line and then a byte every few seconds
SOAK_STORM = 10_000  # alerts of one POST for the storm playbook
SOAK_PROBES = 400  # real alerts, one every ALERT_INTERVAL, for the probe playbook
SOAK_JOURNAL = "rem_soak_journal"
STORM_BOOK = """name: bench-storm
match: {alertname: Storm}
exclusive: false
steps:
  - name: look
    sql: {system: cape, query: "select pg_sleep(0.01)"}
"""


async def slow_connection(port: int, end: float, closed: list[int]) -> bool:
    """Until `end`, hold a connection that sends a request line and then a header byte every
    second; whenever the server closes it (or refuses it), count that and connect again. True if
    the connection open at the end had been held since the start."""
    since_start = True
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /alerts HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            while time.monotonic() < end and not reader.at_eof():
                await asyncio.sleep(1)
                writer.write(b"a")
                await writer.drain()
            writer.close()
            if time.monotonic() >= end:
                return since_start
        except OSError:
            await asyncio.sleep(0.1)
        closed[0] += 1
        since_start = False
    return False


async def probes(url: str, end: float) -> tuple[dict[str, float], list[float], int]:
    """POST one probe alert every ALERT_INTERVAL until SOAK_PROBES or `end`: send times by
    fingerprint, answer latencies, and how many were not answered 200."""
    sent: dict[str, float] = {}
    latencies: list[float] = []
    errors = 0
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for i in range(SOAK_PROBES):
            if time.monotonic() > end:
                break
            fingerprint = f"soak-{i:05d}"
            body = json.dumps(payload(alert(fingerprint=fingerprint))).encode()
            sent[fingerprint] = time.time()
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=HEADERS) as r:
                    errors += r.status != 200
                    await r.read()
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(max(sent[fingerprint] + ALERT_INTERVAL - time.time(), 0))
    return sent, latencies, errors


async def soak(port: int) -> dict[str, Any]:
    end = time.monotonic() + SOAK_SECONDS
    url = f"http://127.0.0.1:{port}/alerts"
    closed = [0]
    slow = [asyncio.create_task(slow_connection(port, end - 5, closed)) for _ in range(SOAK_SLOW)]
    await asyncio.sleep(2)  # the slow connections are open
    storm = json.dumps(payload(*(alert(fingerprint=f"storm-{i:05d}", alertname="Storm")
                                 for i in range(SOAK_STORM)))).encode()
    t0, tries, status = time.perf_counter(), 0, 0
    async with aiohttp.ClientSession() as session:
        while status != 200 and time.monotonic() < end - 20:  # as Alertmanager would, retry until journaled
            tries += 1
            try:
                status, _ = await _post(session, url, storm)
            except aiohttp.ClientError:
                status = 0
            if status != 200:
                await asyncio.sleep(0.5)
    storm_s = time.perf_counter() - t0
    sent, latencies, errors = await probes(url, end - 10)
    held = sum(await asyncio.gather(*slow))
    return {"storm_status": status, "storm_post_s": storm_s, "storm_tries": tries, "sent": sent,
            "latencies": latencies, "errors": errors, "held": held, "closed": closed[0]}


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, str]:
    async with session.post(url, data=body, headers=HEADERS) as r:
        return r.status, await r.text()


def bench_soak(tmp: Path, pg: PostgresServer) -> dict[str, float]:
    """The real remediator under SOAK_SLOW slow connections and a SOAK_STORM-alert storm; what a
    real alert then sees: its POST's latency and the delay until its playbook's first statement."""
    pg.psql(f"create database {SOAK_JOURNAL}")
    pg.psql("create table if not exists bench_marks (fingerprint text not null, at timestamptz not null)", db=MARKS)
    config = remediator_config(tmp, pg, MARKS, SOAK_JOURNAL, MARK_BOOK, STORM_BOOK, max_alerts_per_post=SOAK_STORM,
                               max_body_bytes=16 * 1024 * 1024)
    port = free_port()
    with running([sys.executable, "-m", "remediator", "--config", str(config), "--listen", f"127.0.0.1:{port}"],
                 tmp / "soak.log"):
        wait_http(f"http://127.0.0.1:{port}/readyz")
        r = asyncio.run(soak(port))
        time.sleep(2)  # the last probes' runs
        drained = int(pg.psql("select count(*) from taskmedic_runs where playbook = 'bench-storm' and status = 'done'",
                              db=SOAK_JOURNAL))
    marks = pg.psql("select fingerprint, extract(epoch from at) from bench_marks where fingerprint like 'soak-%'",
                    db=MARKS)
    first = [float(at) - r["sent"][fp] for fp, at in (line.split("|") for line in marks.splitlines() if line)]
    return {"soak_slow": float(SOAK_SLOW), "soak_slow_held": float(r["held"]), "soak_storm": float(SOAK_STORM),
            "soak_slow_closed": float(r["closed"]), "soak_storm_tries": float(r["storm_tries"]),
            "soak_storm_status": float(r["storm_status"]), "soak_storm_post_s": r["storm_post_s"],
            "soak_probes": float(len(r["latencies"])), "soak_errors": float(r["errors"]),
            "soak_p99_ms": bench.p99(r["latencies"]) * 1000, "soak_p50_ms": statistics.median(r["latencies"]) * 1000,
            "soak_first_sql_runs": float(len(first)),
            "soak_first_sql_p99_ms": bench.p99(first) * 1000 if first else math.nan,
            "soak_drained": float(drained)}


def report_lines(r: dict[str, float]) -> list[str]:
    """Rows of the benchmarks table, then the bullets of the "How" section."""
    return table_rows(r) + how(r)


def table_rows(r: dict[str, float]) -> list[str]:
    share = 100 * r["taskmedic_rate"] / r["bare_rate"]
    return [
        f"| remediator webhook, {r['requests']:,.0f} POSTs ({r['concurrency']:.0f} in flight), each journaling a "
        f"new run | **{r['taskmedic_rate']:,.0f}/s**: **{share:.0f} %** of a bare aiohttp handler "
        f"({r['bare_rate']:,.0f}/s); journaling alone, no worker: {r['journal_rate']:,.0f}/s | >= 50 % of bare |",
        f"| remediator webhook p99, same load | **{r['taskmedic_p99_ms']:.1f} ms** (p50 {r['taskmedic_p50_ms']:.1f}); "
        f"journaling alone {r['journal_p99_ms']:.1f} ms; bare handler {r['bare_p99_ms']:.1f} ms; the runs, "
        f"executed meanwhile at {r['runs_per_s']:,.0f}/s, were all done {r['drain_s']:.1f} s after the last POST "
        "| < 20 ms |",
        f"| repair of {r['repair_rows']:,.0f} stuck CAPE tasks ({r['repair_history']:,.0f} history), batches of "
        f"{r['repair_batch']:,.0f} | engine **{r['engine_s']:.2f} s** ({r['engine_transactions']:.0f} batches; the "
        f"same batches in a plain asyncpg loop {r['loop_s']:.2f} s) vs one bulk UPDATE {r['bulk_s']:.2f} s: ratio "
        f"**{r['ratio']:.2f}** | <= 2 |",
        f"| longest lock hold during that repair | **{r['engine_lock_ms']:.0f} ms** (a batch's first row update to "
        f"its commit, all rounds); the bulk UPDATE holds its first row up to {r['bulk_lock_ms']:,.0f} ms | < 200 ms |",
        f"| alert received → first playbook SQL statement, {r['alerts']:.0f} alerts at {1 / ALERT_INTERVAL:.0f}/s | "
        f"p99 **{r['first_sql_p99_ms']:.1f} ms** (p50 {r['first_sql_p50_ms']:.1f}, max "
        f"{r['first_sql_max_ms']:.1f}) | < 100 ms |",
        *soak_rows(r),
    ]


def soak_rows(r: dict[str, float]) -> list[str]:
    if "soak_p99_ms" not in r:
        return []
    return [
        f"| soak: real POSTs while {r['soak_slow']:,.0f} slow clients hold connections open (reconnecting when "
        f"closed) and a {r['soak_storm']:,.0f}-alert storm is drained | {r['soak_probes']:.0f} POSTs, p99 "
        f"**{r['soak_p99_ms']:.1f} ms** (p50 {r['soak_p50_ms']:.1f}), {r['soak_errors']:.0f} not answered 200; "
        f"first SQL of {r['soak_first_sql_runs']:.0f} of their runs p99 **{r['soak_first_sql_p99_ms']:.0f} ms**; "
        f"storm POST answered {r['soak_storm_status']:.0f} after {r['soak_storm_tries']:.0f} tries in "
        f"{r['soak_storm_post_s']:.2f} s, {r['soak_drained']:,.0f} of its runs done meanwhile; slow connections "
        f"closed by the server (and reopened) {r['soak_slow_closed']:,.0f} times, held from start to end "
        f"{r['soak_slow_held']:,.0f} | p99 < 20 ms |",
    ]


def how(r: dict[str, float]) -> list[str]:
    return [
        "- Remediator webhook: an aiohttp client keeps that many POSTs in flight until every Alertmanager payload, "
        "each with a new fingerprint, was answered, against three child processes in turn: a bare aiohttp handler "
        "(the same server setup; reads the body, answers 200), the remediator's app with its worker off, and the "
        "real `taskmedic-remediator` (shipped defaults: 4 workers; a bearer token). One playbook matches every "
        "alert (one `insert` step, `exclusive: false`); a 200 means its run is committed to `taskmedic_runs` "
        "(`synchronous_commit = on`, PostgreSQL on the same machine with fsync off), and in the real process the "
        f"workers execute the runs already journaled meanwhile, on the same 2 cores. {WARMUP} warm-up POSTs each "
        "are not counted.",
        f"- Repair: stuck CAPE tasks (pending, added 3 days ago) among reported ones and 1,000 live ones (left "
        f"alone), failed three ways, each on a fresh copy of one database (`CREATE DATABASE ... TEMPLATE`) after a "
        f"checkpoint and a warming `count(*)`, {r['repair_rounds']:.0f} rounds in rotating order (median times): by "
        "the engine in-process, as a worker runs it (a `sql` step with `batch_size`: `update tasks set status = "
        "'failed_analysis', completed_on = clock_timestamp() where id in (select id ... limit $2)`, each batch its "
        "own transaction, until one comes up short); by the same statement in a plain asyncpg loop (what the engine "
        "adds); by one `UPDATE`. Each row stamps when it is updated, just before it is locked, and the rows of one "
        "transaction share its xmin, whose commit time PostgreSQL records (`track_commit_timestamp`): a "
        "transaction held row locks from its first stamp to that commit (longest of all rounds). A batch costs "
        "mostly finding its rows: PostgreSQL seq-scans for them, and synchronized scans (tables over a quarter of "
        "`shared_buffers`) let each batch carry on where the previous one stopped; the first batch's scan through "
        "the history comes before it locks anything.",
        f"- Alert → first SQL: after the load's runs were done, alerts POSTed one every {ALERT_INTERVAL * 1000:.0f} "
        "ms to the same process; the playbook's first statement is `insert into bench_marks values ($1, "
        "clock_timestamp())` with `{{ alert.fingerprint }}`, and the latency is that server time minus the "
        "`time.time()` taken before the POST (one host clock).",
        f"- Soak ({SOAK_SECONDS:.0f} s, loopback): the real remediator (shipped defaults, `max_alerts_per_post` "
        f"raised to {SOAK_STORM:,}) with two playbooks. {SOAK_SLOW:,} clients each hold a connection that sends a "
        "request line and then one header byte a second, and reconnect whenever the server closes or refuses it; "
        "one POST carries a storm of alerts for a playbook whose step takes 10 ms (retried until answered 200, as "
        "Alertmanager would); then probe alerts for the other playbook are POSTed one every "
        f"{ALERT_INTERVAL * 1000:.0f} ms (10 s client timeout), and their first statement stamps the server clock "
        "as above.",
    ]


def soak_alone() -> int:
    """`soak`: only the soak benchmark, on a PostgreSQL of its own; prints its numbers."""
    root = tempdir("taskmedic-soak-")
    pg = PostgresServer(root / "pg", options=PG_OPTIONS)
    pg.init()
    pg.start()
    try:
        pg.psql(f"create database {MARKS}")
        print("\n".join(soak_rows(bench_soak(root, pg))))
    finally:
        pg.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
    return 0


def serve_baseline(argv: list[str]) -> int:
    """`bare PORT` or `journal-only CONFIG PORT`: the webhook's baselines, run as child processes."""
    if argv[0] == "soak":
        return soak_alone()
    if argv[0] == "bare":
        return commandline.serve(bare_app, ("127.0.0.1", int(argv[1])), "bench-bare", HttpLimits())
    setup = load_setup(argv[1])
    return commandline.serve(lambda: make_app(setup, run_worker=False), ("127.0.0.1", int(argv[2])),
                             "bench-journal-only", setup.settings.http)


if __name__ == "__main__":
    sys.exit(serve_baseline(sys.argv[1:]))
