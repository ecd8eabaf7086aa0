"""`taskmedic-exporter [--config FILE] [--listen HOST:PORT]` and `taskmedic-exporter check`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from exporter.config import ExporterConfig
from exporter.preflight import preflight
from taskmedic import commandline
from taskmedic.config import ConfigError, load


def parser() -> argparse.ArgumentParser:
    p, sub = commandline.base_parser("taskmedic-exporter",
                                     "Prometheus exporter for stuck tasks, queues, disks and backups.",
                                     "address to serve /metrics on (default 0.0.0.0:9863)", "{check}")
    p.add_argument("--web.enable-lifecycle", dest="web_enable_lifecycle", action="store_true",
                   help="also reload the config on POST /-/reload (SIGHUP always reloads it)")
    check = sub.add_parser("check", help="validate the config (and with --connect, reach every source)")
    commandline.add_common(check)
    check.add_argument("--connect", action="store_true",
                       help="connect to every database and Redis, and explain the task queries")
    return p


def main(argv: list[str] | None = None) -> int:
    args = commandline.parse_args(parser(), argv)
    try:
        config = load(ExporterConfig, args.config)
    except ConfigError as err:
        return commandline.report_config_error(err)
    if args.command == "check":
        if not args.connect:
            print(f"{args.config}: valid ({len(config.systems)} systems, {len(config.disks)} disks, "
                  f"{len(config.backups)} backups)")
            return commandline.EXIT_OK
        return asyncio.run(preflight(config, args.config))
    from exporter.server import make_app

    listen = args.listen or commandline.parse_listen(config.exporter.listen)
    return commandline.serve(lambda: make_app(config, args.config, args.web_enable_lifecycle), listen, "exporter",
                             config.exporter.http, args.web_config_file)


if __name__ == "__main__":
    sys.exit(main())
