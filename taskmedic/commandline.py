"""What both commands share on the command line: flags, exit codes, config errors, listening."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from taskmedic import listening, logs
from taskmedic.config.loader import ConfigError
from taskmedic.config.model import HttpLimits
from taskmedic.reload import RELOADER, ReloadStatus
from taskmedic.selfmetrics import revision
from taskmedic.webconfig import OWN_CREDENTIALS, load_web_config, middleware, ssl_context

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def add_common(parser: argparse.ArgumentParser, default_config: str | None = None) -> None:
    parser.add_argument("--config", metavar="FILE", required=default_config is None, default=default_config,
                        help="YAML config file")
    # The Prometheus ecosystem's spellings first; today's spellings stay as aliases.
    parser.add_argument("--log.format", "--log-format", dest="log_format", choices=["logfmt", "json", "text"],
                        default="logfmt", help="logfmt (text is an alias) or json")
    parser.add_argument("--log.level", "--log-level", dest="log_level",
                        choices=["debug", "info", "warning", "error"], default="info")


def base_parser(prog: str, description: str, listen_help: str, commands: str) -> tuple[
        argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]]:
    """The flags every taskmedic command has, and a place for its subcommands."""
    from taskmedic import __version__

    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__} (revision {revision()})")
    add_common(p, default_config="")
    p.add_argument("--web.listen-address", "--listen", dest="listen", type=parse_listen, default=None,
                   metavar="HOST:PORT", help=listen_help)
    p.add_argument("--web.config.file", dest="web_config_file", metavar="FILE", default=None,
                   help="TLS and basic auth, in the Prometheus exporter-toolkit's web config format")
    return p, p.add_subparsers(dest="command", metavar=commands)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, insist on --config (exit 2 without it) and set up logging."""
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("the following arguments are required: --config")
    logs.setup(args.log_format, args.log_level)
    return args


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an empty host means all interfaces


def report_config_error(err: ConfigError) -> int:
    for problem in err.problems:
        print(f"error: {problem}", file=sys.stderr)
    return EXIT_INVALID


def serve(make_app: Callable[[], web.Application], listen: tuple[str, int], name: str,
          limits: HttpLimits, web_config_file: str | None = None) -> int:
    """Run an aiohttp app until SIGTERM/SIGINT, within `limits` (read at start, not reloaded);
    cleanup contexts close everything. SIGHUP reloads the config when the app has a reloader.
    A web config adds TLS and basic auth."""
    log = logging.getLogger(f"taskmedic.{name}")
    tls = None
    if web_config_file is not None:
        try:
            web_config, base = load_web_config(web_config_file)
            if web_config.tls_server_config is not None:
                tls = ssl_context(web_config.tls_server_config, base)
        except ConfigError as err:
            return report_config_error(err)

    async def main() -> None:
        app = make_app()
        if web_config_file is not None:
            app.middlewares.append(middleware(web_config, app.get(OWN_CREDENTIALS)))
        runner = listening.runner(app, limits)
        await runner.setup()
        try:
            server = await listening.listen(runner, listen[0], listen[1], limits, log, tls)
        except BaseException:
            await runner.cleanup()
            raise
        log.info("listening", extra={"address": f"{listen[0]}:{listen[1]}", "tls": tls is not None})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloader = app.get(RELOADER)
        if reloader is not None:
            reloads: set[asyncio.Task[ReloadStatus]] = set()  # held until done: tasks are weakly referenced

            def reload() -> None:
                task = asyncio.create_task(reloader.reload())
                reloads.add(task)
                task.add_done_callback(reloads.discard)

            loop.add_signal_handler(signal.SIGHUP, reload)
        await stop.wait()
        log.info("shutting down")
        server.close()
        await runner.cleanup()

    try:
        asyncio.run(main())
    except OSError as e:
        print(f"error: cannot listen on {listen[0]}:{listen[1]}: {e.strerror}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK
