"""The playbooks shipped in rules/playbooks, validated and run against real CAPE and Timesketch
schemas: the stuck work is healed, the healthy-but-slow work is not touched."""

from __future__ import annotations

from pathlib import Path

from remediator.config import Setup, load_setup
from tests.conftest import Database
from tests.remediator.kit import Site, count, execute, seed_cape
from tests.services import PostgresServer

SHIPPED = Path(__file__).parents[2] / "rules" / "playbooks"


def shipped(site: Site, pg: PostgresServer) -> tuple[Setup, Database]:
    """The shipped playbooks with a config naming one system per built-in profile, by its name
    (the demo's and the README's convention)."""
    timesketch = Database(pg, pg.create_database("timesketch"))
    systems = (f"  timesketch: {{profile: timesketch, database: '{timesketch.dsn}'}}\n"
               f"  harbor: {{profile: harbor, database: '{site.cape.dsn}', redis: '{site.redis_url}'}}\n"
               f"  scanner: {{profile: scanner, database: '{site.cape.dsn}'}}\n"
               f"  celery: {{profile: celery, redis: '{site.redis_url}'}}\n"
               f"  rq: {{profile: rq, redis: '{site.redis_url}'}}\n")
    books = [book.read_text() for book in sorted(SHIPPED.glob("*.yml"))]
    return load_setup(str(site.write(*books, systems=systems))), timesketch


def test_every_shipped_playbook_is_valid(site: Site, pg: PostgresServer) -> None:
    setup, _ = shipped(site, pg)
    assert {p.name for p in setup.playbooks} >= {"cape-fail-stale-pending", "timesketch-fail-orphaned-timelines"}


async def test_cape_playbook_fails_stale_pending_and_leaves_fresh_ones(site: Site, pg: PostgresServer) -> None:
    seed_cape(site.cape)
    setup, _ = shipped(site, pg)
    report = await execute(setup, playbook="cape-fail-stale-pending")
    assert (report.outcome, report.precheck, report.verify) == ("succeeded", 5, 0)
    assert count(site.cape, "status = 'failed_analysis' and completed_on is not null") == 5
    assert count(site.cape, "status = 'pending'") == 2
    again = await execute(setup, playbook="cape-fail-stale-pending")
    assert again.outcome == "skipped"


async def test_timesketch_playbook_fails_orphaned_timelines_only(site: Site, pg: PostgresServer) -> None:
    setup, timesketch = shipped(site, pg)
    timesketch.load("timesketch.sql")
    timesketch.sql("""insert into timeline (id, name, description) values (1, 'orphaned', ''), (2, 'slow', 'big');
                      insert into timeline_status (status, parent_id, created_at) values
                        ('new', 1, now() - interval '5 hours'), ('processing', 1, now() - interval '5 hours'),
                        ('processing', 2, now() - interval '10 minutes')""")
    labels = {"system": "timesketch", "reason": "running_too_long"}
    preview = await execute(setup, labels, dry_run=True, playbook="timesketch-fail-orphaned-timelines")
    assert (preview.outcome, [s.rows for s in preview.steps]) == ("dry_run", [1, 1])
    report = await execute(setup, labels, playbook="timesketch-fail-orphaned-timelines")
    assert report.outcome == "succeeded", report.error
    current = timesketch.sql("select distinct on (parent_id) parent_id, status from timeline_status "
                             "order by parent_id, id desc")
    assert current.splitlines() == ["1|fail", "2|processing"]
    assert "import abandoned" in timesketch.sql("select description from timeline where id = 1")
