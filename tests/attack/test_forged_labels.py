"""Forged alert labels on the shipped engine and RQ playbooks: a label selects the playbook,
never what it touches."""

from __future__ import annotations

import pytest
import redis

from remediator.config import load_setup
from taskmedic.config.loader import ConfigError
from tests.remediator.kit import Site, execute, shipped
from tests.remediator.test_shipped_playbooks import SIDEKIQ_LIVE, seed_engines
from tests.services import PostgresServer

FORGED = {"queue": "default", "worker": SIDEKIQ_LIVE, "job": "m-live", "jid": "jid-live", "job_id": "2",
          "older_than": "0s", "max_items": "100000", "dead_after": "0s", "key": "dramatiq:__acks__.liveworker.default",
          "holding": "x", "window": "0s", "dry_run": "false", "namespace": "evil", "prefix": "evil"}


async def test_forged_labels_change_nothing_the_engine_playbooks_find(site: Site, pg: PostgresServer) -> None:
    setup, _ = shipped(site, pg)
    r = redis.Redis.from_url(site.redis_url)
    seed_engines(r)
    for name in ("dramatiq-give-back-held-work", "bullmq-give-back-stalled-jobs", "sidekiq-capture-expiring-jobs",
                 "arq-give-back-held-work", "rq-recover-worker-gone"):
        book = setup.playbook(name)
        assert book is not None
        labels = {k: v for k, v in book.match.items() if v is not None}
        plain = await execute(setup, labels, dry_run=True, playbook=name)
        forged = await execute(setup, {**labels, **FORGED}, dry_run=True, playbook=name)
        assert forged.outcome == plain.outcome, (name, plain.outcome, forged.outcome, forged.error)
        assert [s.detail for s in forged.steps] == [s.detail for s in plain.steps], name


@pytest.mark.parametrize("step", [
    "engine: {system: '{{ labels.system }}'}",
    "engine: {system: dramatiq, max_items: '{{ labels.max_items }}'}",
    "redis: {system: rq, recover_worker_gone: {queues: ['{{ labels.queue }}']}}",
    "redis: {system: rq, recover_worker_gone: {worker_ttl_below: '{{ labels.ttl }}'}}",
])
def test_a_playbook_that_lets_a_label_decide_is_refused(site: Site, step: str) -> None:
    book = f"name: p\nmatch: {{alertname: TaskmedicStuckTasks}}\nsteps:\n  - name: s\n    {step}\n"
    systems = (f"  dramatiq: {{profile: dramatiq, redis: '{site.redis_url}'}}\n"
               f"  rq: {{profile: rq, redis: '{site.redis_url}'}}\n")
    with pytest.raises(ConfigError, match=r"p0\.yml:5: steps\[0\]\."):
        load_setup(str(site.write(book, systems=systems)))
