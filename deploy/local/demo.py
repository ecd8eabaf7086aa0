"""`make demo`: the whole loop on one machine, with real servers.

Starts a throwaway PostgreSQL, Redis, Prometheus (the shipped rules, 1 s intervals, `for:` cut to
seconds) and Alertmanager (webhook to the remediator with a bearer token), the exporter and the
remediator with the shipped playbooks; seeds the S1, S2, S3 and S5 incidents and a Celery
backlog next to healthy-but-slow work (`seeding`), with the configs `configs` writes; prints a
timeline a person can follow:

    detected → alert firing → webhook → playbook → healed

`--once` exits 0 when every incident is healed and the healthy work is untouched, 1 on timeout.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import signal
import sys
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

from deploy.local import configs
from deploy.local.observing import dashboard_queries, empty_panels, firing_alerts, runs, stuck_series
from deploy.local.seeding import Incident, Seeding
from deploy.local.servers import PostgresServer, RedisServer, free_port, running, tempdir, wait_http

BOLD, DIM, GREEN, RED, YELLOW, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[33m", "\033[0m"


def color(text: str, code: str) -> str:
    return f"{code}{text}{RESET}" if sys.stdout.isatty() else text


@dataclass
class Demo:
    root: Path
    pg: PostgresServer
    rs: RedisServer
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    ports: dict[str, int] = field(default_factory=lambda: {k: free_port() for k in
                                                            ("exporter", "remediator", "prometheus", "alertmanager")})

    def url(self, what: str) -> str:
        return f"http://127.0.0.1:{self.ports[what]}"


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def say(self, text: str, code: str = "") -> None:
        stamp = f"[{time.monotonic() - self.t0:6.1f}s]"
        print(f"{color(stamp, DIM)} {color(text, code) if code else text}", flush=True)


def watch(demo: Demo, incidents: list[Incident], timeline: Timeline, deadline: float) -> bool:
    seen_runs: dict[object, str] = {}
    while time.monotonic() < deadline:
        try:
            stuck = stuck_series(demo.url("exporter"))
            firing = firing_alerts(demo.url("prometheus"))
            all_runs = runs(demo.url("remediator"), demo.token)
        except OSError:
            time.sleep(0.5)
            continue
        for run in all_runs:
            rid, outcome = run.get("id"), str(run.get("outcome") or run.get("status"))
            if seen_runs.get(rid) != outcome:
                seen_runs[rid] = outcome
                code = GREEN if outcome == "succeeded" else (YELLOW if outcome in ("pending", "running", "None")
                                                            else RED)
                timeline.say(f"  webhook → playbook {run.get('playbook')} (run {rid}): {outcome}", code)
        for inc in incidents:
            key = (inc.system, inc.reason)
            if "detected" not in inc.events and stuck.get(key, 0) > 0:
                inc.events["detected"] = time.monotonic()
                timeline.say(f"{inc.name}: detected, {stuck[key]:.0f} stuck "
                             f"(taskmedic_stuck_tasks{{system=\"{inc.system}\",reason=\"{inc.reason}\"}})", YELLOW)
            if "firing" not in inc.events and key in firing:
                inc.events["firing"] = time.monotonic()
                timeline.say(f"{inc.name}: alert TaskmedicStuckTasks firing", YELLOW)
            if "healed" not in inc.events and "detected" in inc.events and inc.healed():
                inc.events["healed"] = time.monotonic()
                timeline.say(f"{inc.name}: healed", GREEN + BOLD)
        if all("healed" in i.events for i in incidents):
            return True
        time.sleep(0.5)
    return False


def start(stack: ExitStack, demo: Demo, seeding: Seeding) -> None:
    """PostgreSQL and Redis with the systems' schemas, then the exporter, the remediator,
    Alertmanager and Prometheus, each stopped when `stack` closes."""
    root = demo.root
    demo.pg.init()
    demo.pg.start()
    stack.callback(demo.pg.stop, "immediate")
    demo.rs.start()
    stack.callback(demo.rs.stop)
    seeding.databases()
    cfg = configs.write_config(root, demo.pg, demo.rs)
    env = {"TASKMEDIC_WEBHOOK_TOKEN": demo.token}
    py = [sys.executable, "-m"]
    rules = configs.write_rules(root)
    for argv, log, extra in (
        ([*py, "exporter", "--config", str(cfg), "--listen", f"127.0.0.1:{demo.ports['exporter']}"],
         "exporter.log", None),
        ([*py, "remediator", "--config", str(cfg), "--listen", f"127.0.0.1:{demo.ports['remediator']}"],
         "remediator.log", env),
        (["prometheus-alertmanager",
          f"--config.file={configs.write_alertmanager(root, demo.token, demo.url('remediator'))}",
          f"--storage.path={root}/am", "--cluster.listen-address=",
          f"--web.listen-address=127.0.0.1:{demo.ports['alertmanager']}"], "alertmanager.log", None),
        (["prometheus", f"--config.file={configs.write_prometheus(root, rules, demo.ports)}",
          f"--storage.tsdb.path={root}/prom", "--rules.alert.resend-delay=1s",
          f"--web.listen-address=127.0.0.1:{demo.ports['prometheus']}"], "prometheus.log", None),
    ):
        stack.enter_context(running(argv, root / log, extra, own_session=True))
    for what, path in (("exporter", "/healthz"), ("remediator", "/healthz"), ("alertmanager", "/-/ready"),
                       ("prometheus", "/-/ready")):
        wait_http(demo.url(what) + path, 60)
    stack.callback(seeding.stop_engines)


def dashboards_without_data(demo: Demo, timeline: Timeline) -> list[str]:
    # rate() and increase() need two scrapes of a series born moments ago
    give_up = time.monotonic() + 20
    while (empty := empty_panels(demo.url("prometheus"))) and time.monotonic() < give_up:
        time.sleep(1)
    for panel in empty:
        timeline.say(f"dashboard panel without data: {panel}", RED)
    if not empty:
        timeline.say(f"all {len(dashboard_queries())} dashboard queries return series")
    return [f"dashboard: {p}" for p in empty]


def report(incidents: list[Incident], touched: list[str], healed: bool, timeline: Timeline, root: Path) -> bool:
    for name in touched:
        timeline.say(f"TOUCHED healthy work: {name}", RED + BOLD)
    ok = healed and not touched
    if ok:
        worst = max(i.events["healed"] - timeline.t0 for i in incidents)
        timeline.say(f"all {len(incidents)} incidents healed ({worst:.0f}s after the start); "
                     "healthy work untouched", GREEN + BOLD)
        return True
    for inc in incidents:
        if "healed" not in inc.events:
            timeline.say(f"NOT healed: {inc.name} (reached: {', '.join(inc.events) or 'nothing'})", RED)
    for log in ("exporter.log", "remediator.log"):
        print(f"--- last lines of {log}:\n" + "\n".join((root / log).read_text().splitlines()[-15:]))
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--once", action="store_true", help="exit when every incident is healed (1 on timeout)")
    p.add_argument("--timeout", type=float, default=150.0, help="seconds to wait for healing with --once")
    args = p.parse_args(argv)
    # SIGTERM (a service manager, `kill`, a CI timeout) stops the stack as Ctrl-C does: every
    # server and seeded process is cleaned up, none is left behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    for binary in ("prometheus", "prometheus-alertmanager", "redis-server"):
        if shutil.which(binary) is None:
            print(f"{binary} is missing: run `make deps` (or `make demo`, which installs it)", file=sys.stderr)
            return 1
    root = tempdir("taskmedic-demo-")
    timeline = Timeline()
    demo = Demo(root, PostgresServer(root / "pg"), RedisServer(root / "redis"))
    seeding = Seeding(root, demo.pg, demo.rs)
    ok = False
    try:
        with ExitStack() as stack:
            start(stack, demo, seeding)
            print(f"{color('taskmedic demo', BOLD)} — everything below is real and local:")
            for what, path in (("exporter", "/metrics"), ("remediator", "/runs"), ("prometheus", "/alerts"),
                               ("alertmanager", "/")):
                print(f"  {what:<13} {demo.url(what)}{path}")
            print(f"  (remediator token for /runs: {demo.token}; logs and config in {root})\n")
            incidents = seeding.seed()
            timeline.say(f"seeded {len(incidents)} incidents and the healthy-but-slow work next to them")
            healed = watch(demo, incidents, timeline, time.monotonic() + (args.timeout if args.once else 3600))
            touched = seeding.untouched()
            if args.once and healed:
                touched += dashboards_without_data(demo, timeline)
            ok = report(incidents, touched, healed, timeline, root)
            if not args.once:
                print("\nThe stack keeps running; Ctrl-C stops it.")
                with suppress(KeyboardInterrupt):
                    signal.pause()
    finally:
        if ok:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs and config kept in {root}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
