"""The remediator's HTTP side: the webhook, the audit trail, health and metrics.

Handlers are thin; `receive` is the whole webhook path — auth, size, schema, match, journal —
and answers 2xx only after the matched runs are committed to the journal. Runs execute later,
from the journal, on whichever replica claims them first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from remediator.config import Setup
from remediator.engine import Engine
from remediator.journal import OUTCOMES, STATUSES, Journal, JournalUnavailable, NewRun
from remediator.matching import matching
from remediator.metrics import Metrics
from remediator.webhook import Credentials, InvalidPayload, Payload, parse
from remediator.worker import Worker
from taskmedic import __version__
from taskmedic.connections import Connections

log = logging.getLogger("taskmedic.remediator.webhook")

MAX_LIST = 1000


@dataclass
class State:
    setup: Setup
    credentials: Credentials
    metrics: Metrics
    journal: Journal
    worker: Worker | None = None


STATE = web.AppKey("state", State)


def _answer(state: State, status: int, body: dict[str, Any]) -> web.Response:
    state.metrics.webhook.labels(str(status)).inc()
    return web.json_response(body, status=status)


def _match(state: State, payload: Payload) -> tuple[list[NewRun], int]:
    """One run per (alert, matching playbook); alerts that match nothing are counted and logged."""
    runs: list[NewRun] = []
    unmatched = 0
    for info in (a.info() for a in payload.alerts):
        playbooks = matching(state.setup.playbooks, info)
        if not playbooks:
            unmatched += 1
            state.metrics.unmatched.inc()
            log.info("alert matches no playbook", extra={"alertname": info.labels.get("alertname"),
                                                         "fingerprint": info.fingerprint, "status": info.status})
        runs += [NewRun(p.name, info, payload.receiver, payload.groupKey) for p in playbooks]
    return runs, unmatched


async def receive(state: State, request: web.Request) -> web.Response:
    """POST /alerts: 401 before the body is read, 413, 400 with each problem, 503 when the
    journal cannot take the runs, 200 once they are committed."""
    if not state.credentials.allows(request.headers.get("Authorization")):
        return _answer(state, 401, {"error": "unauthorized"})
    limit = state.setup.settings.max_body_bytes
    if (request.content_length or 0) > limit:
        return _answer(state, 413, {"error": f"body larger than {limit} bytes"})
    try:
        payload = parse(await request.read())
    except web.HTTPRequestEntityTooLarge:
        return _answer(state, 413, {"error": f"body larger than {limit} bytes"})
    except InvalidPayload as e:
        return _answer(state, 400, {"error": "invalid Alertmanager webhook payload", "problems": e.problems})
    runs, unmatched = _match(state, payload)
    try:
        new = await state.journal.record(runs)
    except JournalUnavailable as e:
        log.error("journal unavailable; answering 503 so Alertmanager retries", extra={"error": str(e)})
        return _answer(state, 503, {"error": "journal unavailable; retry later"})
    if new and state.worker is not None:
        state.worker.wake()
    return _answer(state, 200, {"journaled": new, "duplicates": len(runs) - new, "unmatched": unmatched})


async def post_alerts(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        return await receive(state, request)
    except Exception:
        log.exception("unexpected error in POST /alerts")
        return _answer(state, 500, {"error": "internal error"})


def _json_error(error: type[web.HTTPException], message: str) -> web.HTTPException:
    return error(text=json.dumps({"error": message}), content_type="application/json")


def _authorized(request: web.Request) -> None:
    state = request.app[STATE]
    if state.setup.settings.auth.protect_runs and not state.credentials.allows(request.headers.get("Authorization")):
        raise _json_error(web.HTTPUnauthorized, "unauthorized")


def _choice(request: web.Request, key: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query.get(key) or None
    if value is not None and value not in allowed:
        raise _json_error(web.HTTPBadRequest, f"{key} must be one of {', '.join(allowed)}")
    return value


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "50")
    if not raw.isdigit() or not 0 < int(raw) <= MAX_LIST:
        raise _json_error(web.HTTPBadRequest, f"limit must be 1..{MAX_LIST}")
    return int(raw)


async def list_runs(request: web.Request) -> web.Response:
    _authorized(request)
    state = request.app[STATE]
    try:
        runs = await state.journal.list_runs(request.query.get("playbook") or None,
                                             _choice(request, "outcome", OUTCOMES),
                                             _choice(request, "status", STATUSES), _limit(request))
    except JournalUnavailable:
        return web.json_response({"error": "journal unavailable"}, status=503)
    return web.json_response({"runs": runs})


async def get_run(request: web.Request) -> web.Response:
    _authorized(request)
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        return web.json_response({"error": "run id must be a number"}, status=400)
    try:
        run = await request.app[STATE].journal.get_run(int(raw))
    except JournalUnavailable:
        return web.json_response({"error": "journal unavailable"}, status=503)
    if run is None:
        return web.json_response({"error": f"no run {raw}"}, status=404)
    return web.json_response(run)


async def healthz(request: web.Request) -> web.Response:
    setup = request.app[STATE].setup
    return web.json_response({"status": "ok", "version": __version__, "replica": setup.settings.replica_name,
                              "playbooks": [p.name for p in setup.playbooks], "dry_run": setup.settings.dry_run})


async def readyz(request: web.Request) -> web.Response:
    worker = request.app[STATE].worker
    stopped = worker.stopped_loops() if worker is not None else []
    if stopped:
        return web.json_response({"status": "worker stopped", "loops": stopped}, status=503)
    try:
        await request.app[STATE].journal.ping()
    except JournalUnavailable as e:
        return web.json_response({"status": "journal unavailable", "error": str(e)}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[STATE].metrics.render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


def make_app(setup: Setup, run_worker: bool = True) -> web.Application:
    """The remediator app; with `run_worker=False` it only journals (tests of the webhook alone)."""
    settings = setup.settings
    app = web.Application(client_max_size=settings.max_body_bytes)
    journal = Journal(settings.journal, settings.replica_name, settings.lease, pool_size=settings.workers * 2 + 4)
    app[STATE] = State(setup=setup, credentials=Credentials(setup.tokens, setup.basic),
                       metrics=Metrics(p.name for p in setup.playbooks), journal=journal)

    async def running(app: web.Application) -> AsyncIterator[None]:
        state = app[STATE]
        connections = Connections("taskmedic-remediator", settings.statement_timeout)
        if not state.credentials.required:
            log.warning("no webhook auth configured: anyone who can reach POST /alerts can trigger playbooks, "
                        "and GET /runs (the audit trail: alert labels, rendered parameters, command output) is open")
        if run_worker:
            engine = Engine(setup.config.systems, connections, settings.statement_timeout,
                            setup.config.disks, setup.config.backups)
            state.worker = Worker(setup, journal, engine, state.metrics)
            state.worker.start()
        try:
            await journal.ping()  # creates the table now rather than on the first alert
        except JournalUnavailable as e:
            log.warning("journal not reachable yet; will retry", extra={"error": str(e)})
        yield
        if state.worker is not None:
            await state.worker.stop(settings.shutdown_grace)
        await journal.close()
        await connections.close()

    app.cleanup_ctx.append(running)
    app.router.add_post("/alerts", post_alerts)
    app.router.add_get("/runs", list_runs)
    app.router.add_get("/runs/{id}", get_run)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
