"""Clock and zone truth: CAPE writes naive UTC; on a New York server with no `timezone:` those
rows read 5 hours in the future. Ages cannot be trusted, so the exporter says so and the
remediator refuses; `check --connect` warns before it happens; `timezone: UTC` puts it right."""

from __future__ import annotations

from pathlib import Path

from remediator.config import load_setup
from tests.exporter.helpers import collect, value
from tests.exporter.test_config import run_cli
from tests.remediator.kit import Site, execute, seed_cape_utc_on, shipped
from tests.services import PostgresServer


def seed_utc_rows_on_new_york(site: Site) -> None:
    seed_cape_utc_on(site.cape, "America/New_York")


def check_connect(site: Site, extra: str = "") -> tuple[int, str]:
    """`taskmedic-exporter check --connect` on a config naming the CAPE system only."""
    config = site.tmp / "check.yml"
    config.write_text(f"systems:\n  cape:\n    profile: cape\n    database: {site.cape.dsn}\n{extra}")
    res = run_cli("check", "--config", str(config), "--connect")
    return res.returncode, res.stderr


async def exporter_view(site: Site, config: Path) -> tuple[float | None, float | None, float | None]:
    out = site.tmp / "exporter"
    out.mkdir(exist_ok=True)
    r = (await collect(out, config.read_text()))["tasks:cape"]
    assert r.error is None, r.error
    return (value(r, "taskmedic_clock_skew_seconds", system="cape"),
            value(r, "taskmedic_judgement_trusted", system="cape"),
            value(r, "taskmedic_stuck_tasks", system="cape", reason="pending_too_long"))


async def test_utc_rows_on_a_new_york_server_without_timezone_export_skew_and_the_remediator_refuses(
        site: Site, pg: PostgresServer) -> None:
    seed_utc_rows_on_new_york(site)
    setup, _ = shipped(site, pg)
    config = site.tmp / "taskmedic.yml"
    skew, trusted, stuck = await exporter_view(site, config)
    assert skew is not None and 4 * 3600 < skew < 5 * 3600, skew  # the 40-min task reads ~4h20m ahead
    assert trusted == 0
    assert stuck == 0  # what the wrong zone does: the 3-hour task reads as not yet born
    report = await execute(setup, {"system": "cape", "reason": "pending_too_long"}, playbook="cape-fail-stale-pending")
    assert report.outcome == "refused"
    assert report.error is not None and "in the future" in report.error and "timezone:" in report.error
    assert site.cape.sql("select count(*) from tasks where status = 'pending'") == "2"
    code, warned = check_connect(site)
    assert code == 0, warned
    assert "systems.cape: warning: added_on, completed_on, started_on are `timestamp without time zone`" \
        in warned and "'America/New_York'" in warned


async def test_with_timezone_utc_the_same_rows_have_their_true_ages_and_are_repaired(
        site: Site, pg: PostgresServer) -> None:
    seed_utc_rows_on_new_york(site)
    shipped(site, pg)
    config = site.tmp / "taskmedic.yml"
    config.write_text(config.read_text().replace("    profile: cape\n", "    profile: cape\n    timezone: UTC\n", 1))
    setup = load_setup(str(config))
    assert await exporter_view(site, config) == (0, 1, 1)
    report = await execute(setup, {"system": "cape", "reason": "pending_too_long"}, playbook="cape-fail-stale-pending")
    assert report.outcome == "succeeded", report.error
    assert site.cape.sql("select target, status from tasks order by id").splitlines() == \
        ["stuck.exe|failed_analysis", "fresh.exe|pending"]
    code, quiet = check_connect(site, "    timezone: UTC\n")
    assert code == 0 and "warning" not in quiet, quiet
