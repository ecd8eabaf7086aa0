"""The remediator's HTTP side: the webhook, the audit trail, health and metrics.

Handlers are thin; `receive` is the whole webhook path — auth, size, schema, match, journal —
and answers 2xx only after the matched runs are committed to the journal. Runs execute later,
from the journal, on whichever replica claims them first.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from remediator.alert import OUTCOMES
from remediator.config import RemediatorSettings, Setup, load_setup
from remediator.engine import Engine
from remediator.journal import STATUSES, Journal, JournalUnavailable, NewRun
from remediator.matching import matching
from remediator.metrics import Metrics
from remediator.pause import GLOBAL, Pauses
from remediator.webhook import Credentials, InvalidPayload, Payload, parse
from remediator.worker import Worker
from taskmedic import __version__
from taskmedic.config.model import parse_duration
from taskmedic.connections import Connections
from taskmedic.listening import BodyTimeout
from taskmedic.reload import RELOADER, Reloader, reload_response
from taskmedic.webconfig import OWN_CREDENTIALS, WEB_USER

log = logging.getLogger("taskmedic.remediator.webhook")

MAX_LIST = 1000


@dataclass
class State:
    setup: Setup
    credentials: Credentials
    metrics: Metrics
    journal: Journal
    worker: Worker | None = None

    @property
    def pauses(self) -> Pauses:
        return Pauses(self.journal)


STATE = web.AppKey("state", State)


def _answer(state: State, status: int, body: dict[str, Any]) -> web.Response:
    state.metrics.webhook.labels(str(status)).inc()
    return web.json_response(body, status=status)


def _match(state: State, payload: Payload) -> tuple[list[NewRun], int, int]:
    """One run per (alert, matching playbook), at most `max_alerts_per_post` per playbook; the
    alerts over that cap and those that match nothing are counted and logged, not journaled."""
    runs: list[NewRun] = []
    unmatched = 0
    cap = state.setup.settings.max_alerts_per_post
    kept: Counter[str] = Counter()
    over: Counter[str] = Counter()
    for info in (a.info() for a in payload.alerts):
        playbooks = matching(state.setup.playbooks, info)
        if not playbooks:
            unmatched += 1
            state.metrics.unmatched.inc()
            log.info("alert matches no playbook", extra={"alertname": info.labels.get("alertname"),
                                                         "fingerprint": info.fingerprint, "status": info.status})
        for p in playbooks:
            if kept[p.name] >= cap:
                over[p.name] += 1
            else:
                kept[p.name] += 1
                runs.append(NewRun(p.name, info, payload.receiver, payload.groupKey))
    for name, n in over.items():
        state.metrics.over_cap.labels(name).inc(n)
        log.warning("too many alerts in one POST for a playbook; the rest are suppressed, not journaled", extra={
            "playbook": name, "journaled": cap, "suppressed": n, "max_alerts_per_post": cap})
    return runs, unmatched, sum(over.values())


def authenticated(state: State, request: web.Request) -> bool:
    """The webhook's own credentials, or a user the `--web.config.file` basic auth admitted."""
    return bool(request.get(WEB_USER)) or state.credentials.allows(request.headers.get("Authorization"))


async def receive(state: State, request: web.Request) -> web.Response:
    """POST /alerts: 401 before the body is read, 413, 400 with each problem, 503 when the
    journal cannot take the runs, 200 once they are committed."""
    if not authenticated(state, request):
        return _answer(state, 401, {"error": "unauthorized"})
    limit = state.setup.settings.max_body_bytes
    if (request.content_length or 0) > limit:
        return _answer(state, 413, {"error": f"body larger than {limit} bytes"})
    try:
        payload = parse(await request.read())
    except web.HTTPRequestEntityTooLarge:
        return _answer(state, 413, {"error": f"body larger than {limit} bytes"})
    except BodyTimeout as e:  # the connection is closed already; counted, never delivered
        return _answer(state, 408, {"error": e.text})
    except InvalidPayload as e:
        return _answer(state, 400, {"error": "invalid Alertmanager webhook payload", "problems": e.problems})
    runs, unmatched, over_cap = _match(state, payload)
    try:
        new = await state.journal.record(runs)
    except JournalUnavailable as e:
        log.error("journal unavailable; answering 503 so Alertmanager retries", extra={"error": str(e)})
        return _answer(state, 503, {"error": "journal unavailable; retry later"})
    if new and state.worker is not None:
        state.worker.wake()
    body = {"journaled": new, "duplicates": len(runs) - new, "unmatched": unmatched}
    return _answer(state, 200, body | ({"suppressed": over_cap} if over_cap else {}))


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
    if state.setup.settings.auth.protect_runs and not authenticated(state, request):
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
    """Status for anyone (probes); which playbooks, replica and version only with the webhook credentials."""
    if not authenticated(request.app[STATE], request):
        return web.json_response({"status": "ok"})
    setup = request.app[STATE].setup
    return web.json_response({"status": "ok", "version": __version__, "replica": setup.settings.replica_name,
                              "playbooks": [p.name for p in setup.playbooks], "dry_run": setup.settings.dry_run})


async def readyz(request: web.Request) -> web.Response:
    """Status for anyone; why not ready (loop names, the journal's error with its user@host) only
    with the webhook credentials."""
    details = authenticated(request.app[STATE], request)
    worker = request.app[STATE].worker
    stopped = worker.stopped_loops() if worker is not None else []
    if stopped:
        return web.json_response({"status": "worker stopped", **({"loops": stopped} if details else {})}, status=503)
    try:
        await request.app[STATE].journal.ping()
    except JournalUnavailable as e:
        return web.json_response({"status": "journal unavailable", **({"error": str(e)} if details else {})},
                                 status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[STATE].metrics.render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


# Settings that belong to resources opened at start-up; a reload keeps the running values.
_RESTART_ONLY = ("journal", "listen", "replica", "workers", "lease", "max_body_bytes", "http", "recheck_after")


def _warn_if_open(settings: RemediatorSettings) -> None:
    """At every start (and reload) with `auth: none`: say what is open."""
    if settings.auth.unauthenticated:
        log.warning("auth: none: anyone who can reach POST /alerts can trigger playbooks (and pause or reload "
                    "them), and GET /runs (the audit trail: alert labels, rendered parameters, command output), "
                    "/healthz and /readyz details are open too")


async def _apply(state: State, new: Setup) -> None:
    """Put a reloaded setup in place: credentials, playbooks and systems at once."""
    old = state.setup.settings
    changed = [k for k in _RESTART_ONLY if getattr(old, k) != getattr(new.settings, k)]
    if changed:
        log.warning("reload: these settings take effect at the next restart", extra={"settings": changed})
    state.setup, state.credentials = new, Credentials(new.tokens, new.basic)
    _warn_if_open(new.settings)
    state.metrics.add_playbooks(p.name for p in new.playbooks)
    if state.worker is not None:
        state.worker.reconfigure(new)


async def post_reload(request: web.Request) -> web.Response:
    """POST /-/reload: the same credentials as POST /alerts."""
    if not authenticated(request.app[STATE], request):
        raise _json_error(web.HTTPUnauthorized, "unauthorized")
    return await reload_response(request.app[RELOADER])


async def _pause_body(request: web.Request) -> dict[str, Any]:
    if not authenticated(request.app[STATE], request):
        raise _json_error(web.HTTPUnauthorized, "unauthorized")
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise _json_error(web.HTTPBadRequest, "expected a JSON object") from None
    if not isinstance(body, dict) or set(body) - {"playbook", "reason", "for"}:
        raise _json_error(web.HTTPBadRequest, "expected a JSON object with playbook, reason and/or for")
    playbook = body.get("playbook", GLOBAL)
    if playbook != GLOBAL and request.app[STATE].setup.playbook(str(playbook)) is None:
        raise _json_error(web.HTTPBadRequest, f"no playbook named {playbook!r}")
    return body


async def post_pause(request: web.Request) -> web.Response:
    """POST /pause {"playbook": "...", "reason": "...", "for": "2h"}: every field optional."""
    body = await _pause_body(request)
    try:
        seconds = parse_duration(body["for"]) if body.get("for") is not None else None
    except ValueError as e:
        raise _json_error(web.HTTPBadRequest, f"for: {e}") from None
    state = request.app[STATE]
    try:
        pause = await state.pauses.pause(str(body.get("playbook", GLOBAL)), f"http@{request.remote}",
                                         str(body.get("reason", ""))[:500], seconds)
    except JournalUnavailable:
        raise _json_error(web.HTTPServiceUnavailable, "journal unavailable") from None
    log.warning("remediation paused", extra=pause.as_json())
    return web.json_response(pause.as_json())


async def post_resume(request: web.Request) -> web.Response:
    body = await _pause_body(request)
    scope = str(body.get("playbook", GLOBAL))
    try:
        resumed = await request.app[STATE].pauses.resume(scope)
    except JournalUnavailable:
        raise _json_error(web.HTTPServiceUnavailable, "journal unavailable") from None
    log.warning("remediation resumed", extra={"scope": scope, "was_paused": resumed})
    return web.json_response({"scope": scope, "resumed": resumed})


async def get_pauses(request: web.Request) -> web.Response:
    _authorized(request)
    try:
        active = await request.app[STATE].pauses.active()
    except JournalUnavailable:
        raise _json_error(web.HTTPServiceUnavailable, "journal unavailable") from None
    return web.json_response({"paused": [p.as_json() for p in active]})


def make_app(setup: Setup, run_worker: bool = True) -> web.Application:
    """The remediator app; with `run_worker=False` it only journals (tests of the webhook alone)."""
    settings = setup.settings
    app = web.Application(client_max_size=settings.max_body_bytes)
    journal = Journal(settings.journal, settings.replica_name, settings.lease, pool_size=settings.workers * 2 + 4,
                      recheck_after=settings.recheck_after)
    reloader = Reloader(setup.path, load_setup, lambda new: _apply(app[STATE], new))
    app[RELOADER] = reloader
    app[OWN_CREDENTIALS] = lambda request: app[STATE].credentials.allows(request.headers.get("Authorization"))
    app[STATE] = State(setup=setup, credentials=Credentials(setup.tokens, setup.basic),
                       metrics=Metrics((p.name for p in setup.playbooks), lambda: reloader.status), journal=journal)

    async def running(app: web.Application) -> AsyncIterator[None]:
        state = app[STATE]
        connections = Connections("taskmedic-remediator", settings.statement_timeout)
        _warn_if_open(settings)
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
    app.router.add_post("/-/reload", post_reload)
    app.router.add_post("/pause", post_pause)
    app.router.add_post("/resume", post_resume)
    app.router.add_get("/pause", get_pauses)
    return app
