"""`taskmedic-remediator [--config FILE] [--listen HOST:PORT]`, `check`, `simulate`, and
`pause` / `resume` / `status`, which act on the journal directly (no running server needed)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from remediator.config import Setup, load_setup
from remediator.journal import Journal, JournalUnavailable
from remediator.pause import GLOBAL, Pauses
from taskmedic import commandline
from taskmedic.config import ConfigError
from taskmedic.config.model import parse_duration


def parser() -> argparse.ArgumentParser:
    p, sub = commandline.base_parser("taskmedic-remediator",
                                     "Runs playbooks for Alertmanager alerts, exactly once, with guards.",
                                     "address for the webhook, /runs and /metrics (default 0.0.0.0:9864)",
                                     "{check,simulate,pause,resume,status}")
    check = sub.add_parser("check", help="validate the config and every playbook")
    commandline.add_common(check)
    simulate = sub.add_parser("simulate", help="show what each alert would do: dry runs against the real "
                                               "databases, SQL rolled back, nothing changed")
    commandline.add_common(simulate)
    simulate.add_argument("alerts", metavar="ALERTS.json",
                          help="an Alertmanager webhook payload, or a JSON list of its alerts")
    simulate.add_argument("--output", choices=["text", "json"], default="text")
    for name, text in (("pause", "stop remediation (all playbooks, or one): runs end `suppressed`"),
                       ("resume", "end a pause"), ("status", "show the pauses in force")):
        command = sub.add_parser(name, help=text)
        commandline.add_common(command)
        if name != "status":
            command.add_argument("--playbook", default=GLOBAL, help="one playbook (default: all)")
        if name == "pause":
            command.add_argument("--reason", default="", help="why, shown in every suppressed run")
            command.add_argument("--for", dest="duration", type=_duration, default=None,
                                 help="end the pause by itself after this long (e.g. 2h); default: until resumed")
    return p


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


async def _pauses(setup: Setup, args: argparse.Namespace) -> int:
    settings = setup.settings
    journal = Journal(settings.journal, settings.replica_name, settings.lease, pool_size=1)
    pauses = Pauses(journal)
    try:
        if args.command == "pause":
            unknown = args.playbook != GLOBAL and setup.playbook(args.playbook) is None
            if unknown:
                print(f"error: no playbook named {args.playbook!r}", file=sys.stderr)
                return commandline.EXIT_INVALID
            print((await pauses.pause(args.playbook, f"cli@{settings.replica_name}", args.reason,
                                      args.duration)).describe())
        elif args.command == "resume":
            resumed = await pauses.resume(args.playbook)
            print(("resumed " if resumed else "was not paused: ") + ("all playbooks" if args.playbook == GLOBAL
                                                                     else args.playbook))
        else:
            active = await pauses.active()
            print("\n".join(p.describe() for p in active) or "not paused")
    except JournalUnavailable as e:
        print(f"error: journal unavailable: {e}", file=sys.stderr)
        return commandline.EXIT_INVALID
    finally:
        await journal.close()
    return commandline.EXIT_OK


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
        if args.command in ("pause", "resume", "status"):
            return asyncio.run(_pauses(setup, args))
    except ConfigError as err:
        return commandline.report_config_error(err)
    from remediator.server import make_app

    listen = args.listen or commandline.parse_listen(setup.settings.listen)
    return commandline.serve(lambda: make_app(setup), listen, "remediator", setup.settings.http,
                             args.web_config_file)


if __name__ == "__main__":
    sys.exit(main())
