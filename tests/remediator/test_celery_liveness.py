"""Timesketch's imports judged as Celery sees them: a `processing` timeline is alive while a live
worker reports its import (or it waits in the queue); a worker killed mid-import makes its timeline
`worker_gone` at the next exporter cycle; no worker answering is unknown: 0 stuck, nothing repaired."""

from __future__ import annotations

import time
from pathlib import Path

from celery import Celery

from tests.conftest import Database
from tests.exporter.helpers import collect, value
from tests.polling import wait_until
from tests.remediator.kit import Site, execute, shipped
from tests.services import PostgresServer
from tests.workers.celery_run import active_rows, answers, celery_worker, sigkill

BOOK = "timesketch-fail-orphaned-timelines"
LABELS = {"system": "timesketch", "reason": "worker_gone"}


def seed(timesketch: Database, ages: dict[int, str]) -> None:
    timesketch.load("timesketch.sql")
    for tid, age in ages.items():
        timesketch.sql(f"insert into timeline (id, name, description) values ({tid}, 't{tid}', '');"
                       f"insert into timeline_status (status, parent_id, created_at) values "
                       f"('processing', {tid}, now() - interval '{age}')")


async def exporter(site: Site) -> tuple[float | None, float | None]:
    """(worker_gone count, judgement trusted) as the exporter reports them on the same config."""
    out = site.tmp / "exporter"
    out.mkdir(exist_ok=True)
    result = (await collect(out, (site.tmp / "taskmedic.yml").read_text()))["tasks:timesketch"]
    assert result.error is None, result.error
    return (value(result, "taskmedic_stuck_tasks", system="timesketch", reason="worker_gone"),
            value(result, "taskmedic_judgement_trusted", system="timesketch"))


def import_timeline(broker: str, timeline_id: int, queue: str, as_keyword: bool = False) -> None:
    app = Celery("timesketch-api", broker=broker, set_as_current=False)
    head = ["/tmp/upload.plaso", "", f"t{timeline_id}", f"index{timeline_id}", "plaso"]
    if as_keyword:
        app.send_task("timesketch.lib.tasks.run_plaso", args=head, kwargs={"timeline_id": timeline_id}, queue=queue)
    else:
        app.send_task("timesketch.lib.tasks.run_plaso", args=[*head, timeline_id], queue=queue)


async def test_killed_worker_orphans_its_timeline_only_while_a_3h_import_on_a_live_worker_is_never_flagged(
        site: Site, pg: PostgresServer, tmp: Path) -> None:
    setup, timesketch = shipped(site, pg)
    # 1: a 3-hour import on a live worker; 2: a worker about to die; 3: queued behind busy workers.
    seed(timesketch, {1: "3 hours", 2: "2 minutes", 3: "2 hours"})
    broker = site.redis_url
    with celery_worker(broker, "live", "live", tmp) as _, celery_worker(broker, "doomed", "doomed", tmp) as doomed:
        import_timeline(broker, 1, "live")
        import_timeline(broker, 2, "doomed", as_keyword=True)
        import_timeline(broker, 3, "celery")  # no worker consumes `celery` here: it waits
        wait_until(lambda: active_rows(broker) == {1, 2}, 60, "both workers to report their imports")
        assert await exporter(site) == (0, 1)
        killed = time.monotonic()
        sigkill(doomed)
        assert await exporter(site) == (1, 1)  # the very next cycle
        detected = time.monotonic() - killed
        report = await execute(setup, LABELS, playbook=BOOK)
        assert report.outcome == "succeeded", report.error
        assert report.targets is not None and report.targets.ids == [2]
        attached = timesketch.sql("select parent_id, status from timeline_status where parent_id is not null "
                                  "order by parent_id")
        assert attached.splitlines() == ["1|processing", "2|fail", "3|processing"]
        assert "no live Celery worker" in timesketch.sql("select description from timeline where id = 2")
        assert await exporter(site) == (0, 1)
    assert detected < 30


async def test_no_worker_answering_is_unknown_nothing_stuck_and_the_playbook_refuses(
        site: Site, pg: PostgresServer) -> None:
    setup, timesketch = shipped(site, pg)
    seed(timesketch, {1: "5 hours"})
    assert await exporter(site) == (0, 0)
    report = await execute(setup, LABELS, playbook=BOOK)
    assert report.outcome == "refused"
    assert report.error is not None and "no Celery worker answered" in report.error
    assert timesketch.sql("select status from timeline_status where parent_id = 1") == "processing"


async def test_a_just_started_import_has_a_minute_of_grace_before_it_is_judged(
        site: Site, pg: PostgresServer, tmp: Path) -> None:
    setup, timesketch = shipped(site, pg)
    seed(timesketch, {1: "20 seconds", 2: "5 minutes"})  # neither has an import anywhere
    with celery_worker(site.redis_url, "idle", "idle", tmp):
        wait_until(lambda: answers(site.redis_url), 60, "the worker to answer")
        assert await exporter(site) == (1, 1)
        report = await execute(setup, LABELS, dry_run=True, playbook=BOOK)
        assert report.targets is not None and report.targets.ids == [2]
