"""Benchmarks for the exporter, then the remediator (bench/remediator.py) (`make bench`);
results with the machine's details go to docs/benchmarks.md. Not tests: nothing here asserts a
time; it measures and reports.

    python -m bench [--rows-large 10000000] [--skip-zip] [--zip-data-gb 1.5] [--skip-remediator]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import aiohttp
import psutil
import redis

from bench import engines as bench_engines
from bench import harbor as bench_harbor
from bench import liveness as bench_liveness
from bench import remediator as bench_remediator
from deploy.local.servers import PostgresServer, RedisServer, free_port, running, tempdir, wait_http
from taskmedic.archive import check_file
from tests.exporter.helpers import collect

ROOT = Path(__file__).resolve().parents[1]
CAPE_SQL = ROOT / "tests" / "fixtures" / "cape.sql"
INSERT = ("insert into tasks (target, category, memory, enforce_timeout, clock, added_on, started_on, status, "
          "timeout, timedout) select 'x', 'file', false, false, localtimestamp, {added}, {started}, '{status}', "
          "200, false from generate_series(1, {n})")


def seed_cape(pg: PostgresServer, db: str, history: int, live: int = 1000) -> None:
    pg.psql(f"create database {db}")
    pg.psql_file(CAPE_SQL, db=db)
    pg.psql(INSERT.format(n=history, status="reported", added="localtimestamp - interval '30 days'",
                          started="localtimestamp - interval '30 days'"), db=db)
    pg.psql(INSERT.format(n=live // 2, status="pending", added="localtimestamp - interval '2 hours'",
                          started="null"), db=db)
    pg.psql(INSERT.format(n=live // 2, status="running", added="localtimestamp - interval '1 hour'",
                          started="localtimestamp - interval '1 hour'"), db=db)
    pg.psql("vacuum analyze tasks", db=db)


def cape_config(pg: PostgresServer, db: str) -> str:
    return f"systems:\n  cape:\n    profile: cape\n    database: {pg.dsn(db)}\n"


def bench_history(tmp: Path, pg: PostgresServer, small: int, large: int) -> dict[str, float]:
    seed_cape(pg, "hist_small", small)
    seed_cape(pg, "hist_large", large)
    a = live_only_median(tmp, pg, "hist_small")
    b = live_only_median(tmp, pg, "hist_large")
    return {"small_ms": a * 1000, "large_ms": b * 1000, "ratio": b / a}


def live_only_median(tmp: Path, pg: PostgresServer, db: str, rounds: int = 50) -> float:
    from exporter.config import ExporterConfig
    from taskmedic.config import load
    from taskmedic.detection.sql import build_live_query

    path = tmp / "cfg.yml"
    path.write_text(cape_config(pg, db))
    tasks = load(ExporterConfig, path, environ={}).systems["cape"].tasks
    assert tasks is not None
    query = build_live_query(tasks)

    async def run() -> list[float]:
        import asyncpg

        conn = await asyncpg.connect(pg.dsn(db))
        out = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            await conn.fetch(query.sql, *query.params)
            out.append(time.perf_counter() - t0)
        await conn.close()
        return out
    return statistics.median(asyncio.run(run())[5:])


async def hammer(url: str, seconds: float, rate: float, scrapers: int = 2, bodies: Iterable[bytes] | None = None,
                 headers: Mapping[str, str] | None = None) -> list[float]:
    """`scrapers` clients sharing one session, each at up to `rate` requests/s for `seconds`: GETs,
    or POSTs of `bodies` (each sent once, by whichever client is free) until they run out."""
    latencies: list[float] = []
    requests: Iterator[bytes | None] = iter(bodies) if bodies is not None else itertools.repeat(None)

    async def scraper(session: aiohttp.ClientSession) -> None:
        end = time.monotonic() + seconds
        for body in requests:
            if time.monotonic() >= end:
                return
            t0 = time.perf_counter()
            async with session.request("GET" if body is None else "POST", url, data=body, headers=headers) as r:
                await r.read()
                assert r.status == 200
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(max(1 / rate - (time.perf_counter() - t0), 0))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(scraper(session) for _ in range(scrapers)))
    return latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def query_exporter_bin() -> str | None:
    venv = Path(tempfile.gettempdir()) / "taskmedic-bench-query-exporter"
    exe = venv / "bin" / "query-exporter"
    if not (venv / "ready").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = str(venv / "bin" / "pip")
        res = subprocess.run([pip, "install", "-q", "query-exporter", "psycopg[binary]"], capture_output=True)
        if res.returncode:
            return None
        (venv / "ready").touch()
    return str(exe)


QE_CONFIG = """databases:
  cape:
    dsn: {dsn}
metrics:
  cape_tasks:
    type: gauge
    labels: [status]
  cape_stuck_pending:
    type: gauge
  cape_oldest_pending_age:
    type: gauge
queries:
  tasks:
    databases: [cape]
    metrics: [cape_tasks]
    sql: select count(*) as cape_tasks, status::text as status from tasks group by status
  stuck:
    databases: [cape]
    metrics: [cape_stuck_pending, cape_oldest_pending_age]
    sql: >
      select count(*) filter (where added_on < localtimestamp - interval '1 hour') as cape_stuck_pending,
             coalesce(extract(epoch from localtimestamp - min(added_on)), 0) as cape_oldest_pending_age
      from tasks where status = 'pending'
"""


def bench_scrape(tmp: Path, pg: PostgresServer, rows: int, seconds: float) -> dict[str, float]:
    seed_cape(pg, "scrape", rows)
    out: dict[str, float] = {}
    cfg = tmp / "scrape.yml"
    cfg.write_text(cape_config(pg, "scrape"))
    port = free_port()
    with running([sys.executable, "-m", "exporter", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                 tmp / "exporter.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/metrics")
        time.sleep(2)
        lat = asyncio.run(hammer(f"http://127.0.0.1:{port}/metrics", seconds, 10))
        out["taskmedic_p99_ms"] = p99(lat) * 1000
        out["taskmedic_p50_ms"] = statistics.median(lat) * 1000
        out["taskmedic_scrapes"] = len(lat)
        time.sleep(1)
        out["taskmedic_rss_mb"] = psutil.Process(proc.pid).memory_info().rss / 2**20
    qe = query_exporter_bin()
    if qe:
        qcfg = tmp / "qe.yaml"
        qcfg.write_text(QE_CONFIG.format(dsn=pg.dsn("scrape")))
        qport = free_port()
        with running([qe, "--config", str(qcfg), "--port", str(qport), "--host", "127.0.0.1"], tmp / "qe.log"):
            wait_http(f"http://127.0.0.1:{qport}/metrics")
            lat = asyncio.run(hammer(f"http://127.0.0.1:{qport}/metrics", seconds, 10))
            out["query_exporter_p99_ms"] = p99(lat) * 1000
            out["query_exporter_p50_ms"] = statistics.median(lat) * 1000
            out["query_exporter_scrapes"] = len(lat)
    return out


def bench_rss_at_rest(tmp: Path, pg: PostgresServer, rs: RedisServer) -> float:
    """A typical deployment at rest: a CAPE database, a Celery broker, a disk."""
    cfg = tmp / "rest.yml"
    cfg.write_text(cape_config(pg, "hist_small") + f"  jobs:\n    profile: celery\n    redis: {rs.url(0)}\n"
                   f"disks:\n  - path: {tmp}\n")
    port = free_port()
    with running([sys.executable, "-m", "exporter", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                 tmp / "rest.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/metrics")
        time.sleep(3)
        return psutil.Process(proc.pid).memory_info().rss / 2**20


def bench_redis(tmp: Path, server: RedisServer, queues: int = 1000) -> dict[str, float]:
    client = redis.Redis.from_url(server.url(0))
    client.flushdb()
    pipe = client.pipeline(transaction=False)
    for i in range(queues):
        pipe.rpush(f"work:q{i:04d}", *range(5))
    pipe.execute()
    cfg = (f"systems:\n  lists:\n    redis: {server.url(0)}\n    queues:\n      type: list\n"
           f"      names: [{', '.join(f'work:q{i:04d}' for i in range(queues))}]\n")

    async def run() -> list[float]:
        out = []
        for _ in range(20):
            r = (await collect(tmp, cfg))["queues:lists"]
            assert r.up and len(r.samples) == queues, r.error
            out.append(r.duration)
        return out
    durations = asyncio.run(run())
    return {"median_ms": statistics.median(durations) * 1000, "max_ms": max(durations) * 1000}


def write_big_zip(path: Path, gigabytes: float) -> Path:
    """A STORED ZIP64 archive of random data, as large as asked."""
    chunk = os.urandom(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        with z.open("backup.jsonl", "w", force_zip64=True) as f:
            for _ in range(int(gigabytes * 1024)):
                f.write(chunk)
        z.writestr("stats.json", "{}")
    return path


def bench_zip(tmp: Path, gigabytes: float) -> dict[str, float]:
    path = write_big_zip(tmp / "big.zip", gigabytes)
    size = path.stat().st_size
    import tracemalloc

    tracemalloc.start()
    t0 = time.perf_counter()
    ok, _ = check_file(str(path))
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert ok
    t0 = time.perf_counter()
    unzip = subprocess.run(["unzip", "-tqq", str(path)], capture_output=True)
    unzip_s = time.perf_counter() - t0
    path.unlink()
    return {"size_gb": size / 2**30, "check_ms": elapsed * 1000, "peak_kb": peak / 1024,
            "unzip_t_s": unzip_s, "unzip_ok": float(unzip.returncode == 0)}


_CHILD = """
import json, re, sys, time
from taskmedic.archive import check_file, check_stream
what, path, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
t0 = time.perf_counter()
verdict = check_file(path) if what == "structure" else check_stream(path, rate) if what == "data" else (True, "")
elapsed = time.perf_counter() - t0
with open("/proc/self/status") as status:  # VmHWM: this image's peak RSS (getrusage's survives exec)
    peak_kb = int(re.search(r"VmHWM:\\s+(\\d+)", status.read()).group(1))
print(json.dumps({"s": elapsed, "ok": verdict[0], "rss_kb": peak_kb}))
"""


def _zip_check_in_child(what: str, path: Path, rate: float) -> dict[str, float]:
    """One check in a fresh interpreter, so its peak RSS is its own."""
    out = subprocess.run([sys.executable, "-c", _CHILD, what, str(path), str(rate)], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    return {k: float(v) for k, v in json.loads(out).items()}


def bench_zip_data(tmp: Path, gigabytes: float, budget_mib: float) -> dict[str, float]:
    """Structural check vs the full CRC pass of `verify_data` on the same zip (the file is in the
    page cache after writing it, so the unbudgeted pass measures CPU, not the disk), and the
    budgeted pass's effective read rate against its budget."""
    path = write_big_zip(tmp / "data.zip", gigabytes)
    size = path.stat().st_size
    try:
        idle = _zip_check_in_child("none", path, 1)
        structure = _zip_check_in_child("structure", path, 1)
        full = _zip_check_in_child("data", path, float("inf"))
        budget = budget_mib * 2**20
        budgeted = _zip_check_in_child("data", path, budget)
    finally:
        path.unlink()
    assert structure["ok"] and full["ok"] and budgeted["ok"]
    return {"size_gb": size / 2**30, "interpreter_rss_mb": idle["rss_kb"] / 1024,
            "structure_ms": structure["s"] * 1000, "structure_rss_mb": structure["rss_kb"] / 1024,
            "full_s": full["s"], "full_rss_mb": full["rss_kb"] / 1024, "full_mib_s": size / 2**20 / full["s"],
            "budget_mib_s": budget_mib, "budgeted_s": budgeted["s"], "budgeted_rss_mb": budgeted["rss_kb"] / 1024,
            "budgeted_mib_s": size / 2**20 / budgeted["s"]}


def zip_data_report(z: Mapping[str, float]) -> tuple[str, str]:
    row = (f"| zip data test (`verify_data`) of a {z['size_gb']:.1f} GB zip | "
           f"structure **{z['structure_ms']:.2f} ms**, "
           f"peak RSS {z['structure_rss_mb']:.1f} MB; full CRC pass {z['full_s']:.1f} s ({z['full_mib_s']:.0f} MiB/s "
           f"from the page cache), peak RSS {z['full_rss_mb']:.1f} MB; with a budget of {z['budget_mib_s']:.0f} MiB/s "
           f"**{z['budgeted_mib_s']:.1f} MiB/s** ({z['budgeted_s']:.1f} s), peak RSS {z['budgeted_rss_mb']:.1f} MB "
           f"(interpreter alone {z['interpreter_rss_mb']:.1f} MB) | budget honoured; constant memory |")
    how = ("- Zip data test: a STORED ZIP64 archive of random data written by Python's zipfile, checked in a fresh "
           "interpreter each time (peak RSS: its `VmHWM`): `check_file` (tail only), then `check_stream` (every "
           "member decompressed and CRC-checked, 1 MiB reads) without a budget and with one; the effective rate is "
           "the file's size over the pass's duration.")
    return row, how


def machine() -> str:
    pg = subprocess.run(["postgres", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"{pg or 'PostgreSQL'}")


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    h, s, r = results["history"], results["scrape"], results["redis"]
    lines = [
        "# Benchmarks", "",
        f"Measured {time.strftime('%Y-%m-%d')} by `make bench` ({' '.join(sys.argv[1:]) or 'defaults'}) on: "
        f"{machine()}.", "",
        "Numbers are from one run on a shared 2-core machine; rerun `make bench` to reproduce. "
        "Targets come from the project's issues.", "",
        "| what | measured | target |", "|---|---|---|",
        f"| live task query, {args.rows_small:,} vs {args.rows_large:,} rows of history (1,000 live) | "
        f"{h['small_ms']:.2f} ms vs {h['large_ms']:.2f} ms: ratio **{h['ratio']:.2f}** | <= 1.5 |",
        f"| `/metrics` p99, 2 scrapers x 10/s, {args.rows_scrape:,}-row table | "
        f"taskmedic **{s['taskmedic_p99_ms']:.2f} ms**"
        f" (p50 {s['taskmedic_p50_ms']:.2f}, {s['taskmedic_scrapes']:.0f} scrapes)"
        + (f"; query-exporter {s['query_exporter_p99_ms']:.1f} ms (p50 {s['query_exporter_p50_ms']:.1f})"
           if "query_exporter_p99_ms" in s else "; query-exporter could not be installed") + " | < 5 ms |",
        f"| 1,000 Redis queues, one pipelined round trip | median **{r['median_ms']:.1f} ms**, max {r['max_ms']:.1f} ms"
        " | < 50 ms |",
    ]
    if "zip" in results:
        z = results["zip"]
        lines.append(f"| validity of a {z['size_gb']:.1f} GB zip | **{z['check_ms']:.2f} ms**, peak "
                     f"{z['peak_kb']:.0f} KB Python memory; `unzip -t` {z['unzip_t_s']:.1f} s | < 10 ms, < 1 MB |")
    if "zip_data" in results:
        lines.append(zip_data_report(results["zip_data"])[0])
    if "harbor" in results:
        lines.append(bench_harbor.report_line(results["harbor"]))
    if "celery_kill" in results:
        lines += bench_liveness.report_lines(results)
    lines += bench_engines.report_lines(results)
    lines.append(f"| exporter RSS at rest (CAPE + Celery + disk) | **{results['rss']['at_rest_mb']:.1f} MB**; "
                 f"serving the scrape benchmark {s['taskmedic_rss_mb']:.1f} MB | < 60 MB |")
    remediator = bench_remediator.report_lines(results["remediator"]) if "remediator" in results else []
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), remediator))
    lines += [*rows, "", "## How", "",
              "- History: the CAPE profile's live query (one UNION ALL branch per live status, each served by "
              "the status index) timed with asyncpg, median of 45 runs after 5 warm-ups. Terminal statuses are "
              "counted on their own `history_interval` (5 min by default), which is what keeps the per-cycle "
              "cost bound to live tasks.",
              "- Scrapes: the real `taskmedic-exporter` process and a real `query-exporter` (PyPI) with the "
              "equivalent queries, each hit by two aiohttp clients at 10 requests/s. taskmedic renders a cached "
              "snapshot; query-exporter runs its queries on each scrape.",
              "- Redis: the `list` queue collector over 1,000 lists, `run_once` duration (includes connecting).",
              "- Harbor kill → detect: two gocraft-style pools (deploy/local/gocraft_pool.py) each run a "
              "13 h REPLICATION; the real exporter (harbor profile, 1 s interval) is scraped every 100 ms from "
              "the SIGKILL of one pool until `worker_gone` rises, then for 10 s more to catch a count for the "
              "live twin; the kill falls at a random point of the 5 s heartbeat cycle. A pool is dead 10 s after "
              "its last heartbeat (gocraft's deadTime), which was 0-5 s before the kill: detection is expected "
              "5-11 s after it, plus up to one collection interval.",
              *([bench_liveness.HOW] if "celery_kill" in results else []),
              *([bench_engines.HOW] if bench_engines.report_lines(results) else []),
              "- Zip: a ZIP64 archive of random data written by Python's zipfile, checked by `taskmedic.archive`"
              " (tail read only) with tracemalloc measuring peak allocation, versus `unzip -tqq`.",
              *([zip_data_report(results["zip_data"])[1]] if "zip_data" in results else []),
              *remediator[len(rows):], ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows-small", type=int, default=100_000)
    p.add_argument("--rows-large", type=int, default=10_000_000)
    p.add_argument("--rows-scrape", type=int, default=1_000_000)
    p.add_argument("--scrape-seconds", type=float, default=20)
    p.add_argument("--zip-gb", type=float, default=5)
    p.add_argument("--zip-data-gb", type=float, default=1.5)
    p.add_argument("--zip-budget-mib", type=float, default=100)
    p.add_argument("--skip-zip", action="store_true")
    p.add_argument("--skip-remediator", action="store_true")
    bench_remediator.add_arguments(p)
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = p.parse_args()
    root = tempdir("taskmedic-bench-")
    tmp = root / "work"
    tmp.mkdir()
    pg = PostgresServer(root / "pg", options=bench_remediator.PG_OPTIONS)
    pg.init()
    pg.start()
    rs = RedisServer(root / "redis")
    rs.start()
    results: dict[str, dict[str, float]] = {}
    try:
        print("history ...", flush=True)
        results["history"] = bench_history(tmp, pg, args.rows_small, args.rows_large)
        print(results["history"], "\nscrapes ...", flush=True)
        results["scrape"] = bench_scrape(tmp, pg, args.rows_scrape, args.scrape_seconds)
        print(results["scrape"], "\nredis ...", flush=True)
        results["redis"] = bench_redis(tmp, rs)
        results["rss"] = {"at_rest_mb": bench_rss_at_rest(tmp, pg, rs)}
        print("harbor kill → detect ...", flush=True)
        results["harbor"] = bench_harbor.measure(tmp, pg, rs)
        print(results["harbor"], flush=True)
        print(results["redis"], results["rss"], flush=True)
        print("celery and scanner kill → detect ...", flush=True)
        results |= bench_liveness.measure(tmp, pg, rs)
        print({k: results[k] for k in bench_liveness.KEYS}, flush=True)
        results |= bench_engines.measure(tmp)
        if not args.skip_zip:
            print("zip ...", flush=True)
            results["zip"] = bench_zip(tmp, args.zip_gb)
            print(results["zip"], "\nzip data ...", flush=True)
            results["zip_data"] = bench_zip_data(tmp, args.zip_data_gb, args.zip_budget_mib)
            print(results["zip_data"], flush=True)
        if not args.skip_remediator:
            print("remediator ...", flush=True)
            results["remediator"] = bench_remediator.measure(tmp, pg, args)
            print(results["remediator"], flush=True)
    finally:
        rs.stop()
        pg.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
    Path(args.out).write_text(report(results, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
