"""`taskmedic-remediator [--config FILE] [--listen HOST:PORT]`, `check` and `simulate`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from remediator.config import Setup, load_setup
from taskmedic import commandline
from taskmedic.config import ConfigError


def parser() -> argparse.ArgumentParser:
    p, sub = commandline.base_parser("taskmedic-remediator",
                                     "Runs playbooks for Alertmanager alerts, exactly once, with guards.",
                                     "address for the webhook, /runs and /metrics (default 0.0.0.0:9864)",
                                     "{check,simulate}")
    check = sub.add_parser("check", help="validate the config and every playbook")
    commandline.add_common(check)
    simulate = sub.add_parser("simulate", help="show what each alert would do: dry runs against the real "
                                               "databases, SQL rolled back, nothing changed")
    commandline.add_common(simulate)
    simulate.add_argument("alerts", metavar="ALERTS.json",
                          help="an Alertmanager webhook payload, or a JSON list of its alerts")
    simulate.add_argument("--output", choices=["text", "json"], default="text")
    return p


def _check(setup: Setup) -> int:
    names = ", ".join(p.name for p in setup.playbooks)
    print(f"{setup.path}: valid ({len(setup.config.systems)} systems, {len(setup.playbooks)} playbooks: {names})")
    return commandline.EXIT_OK


def _simulate(setup: Setup, args: argparse.Namespace) -> int:
    from remediator.simulate import format_text, read_alerts, simulate

    results = asyncio.run(simulate(setup, read_alerts(args.alerts)))
    print(json.dumps(results, indent=2, default=str) if args.output == "json" else format_text(results))
    return commandline.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = commandline.parse_args(parser(), argv)
    try:
        setup = load_setup(args.config)
        if args.command == "check":
            return _check(setup)
        if args.command == "simulate":
            return _simulate(setup, args)
    except ConfigError as err:
        return commandline.report_config_error(err)
    from remediator.server import make_app

    listen = args.listen or commandline.parse_listen(setup.settings.listen)
    return commandline.serve(lambda: make_app(setup), listen, "remediator", setup.settings.http)


if __name__ == "__main__":
    sys.exit(main())
