"""The `sql` step against real PostgreSQL: typed parameters, one transaction per run, batches."""

from __future__ import annotations

from tests.remediator.kit import Site, count, execute, seed_cape, trusting_labels

STALE = "status = 'pending' and added_on < localtimestamp - interval '1 hour'"


def book(*steps: str, extra: str = "") -> str:
    return trusting_labels("name: t\nmatch: {alertname: TaskmedicStuckTasks}\nsteps:\n" + "".join(steps) + extra)


def sql_step(name: str, body: str) -> str:
    return f"  - name: {name}\n    sql: {{system: cape, {body}}}\n"


async def test_rendered_strings_become_the_types_postgresql_inferred(site: Site) -> None:
    seed_cape(site.cape)
    setup = site.setup(book(sql_step("typed", """query: "select $1::interval, $2::int + 1, $3::numeric * 2,
        $4::timestamp, $5::bool, $6::status_type, $7::text, $8", params: ["{{ labels.age }}", "41", "1.25",
        "2026-11-22 10:00:00", true, pending, "{{ labels.system }}", 7]""")))
    report = await execute(setup, {"age": "2 days 03:00:00"})
    assert report.outcome == "succeeded", report
    assert report.steps[0].detail["params"] == ["2 days 03:00:00", "41", "1.25", "2026-11-22 10:00:00", "true",
                                                "pending", "cape", "7"]


async def test_a_value_postgresql_cannot_read_fails_the_run_naming_the_parameter(site: Site) -> None:
    seed_cape(site.cape)
    setup = site.setup(book(sql_step("fail", """statement: "update tasks set status = 'failed_analysis'
        where status = 'pending' and added_on < localtimestamp - $1::interval", params: ["{{ labels.age }}"]""")))
    report = await execute(setup, {"age": "1 hour'; drop table tasks; --"})
    assert report.outcome == "failed"
    assert report.error == ("step 'fail': parameter $1 (interval): invalid input syntax for type interval: "
                            "\"1 hour'; drop table tasks; --\"")
    assert count(site.cape, STALE) == 5


async def test_a_missing_label_fails_the_run_with_the_template_error(site: Site) -> None:
    seed_cape(site.cape)
    setup = site.setup(book(sql_step("fail", """query: "select $1::int", params: ["{{ labels.task_id }}"]""")))
    report = await execute(setup)
    assert report.outcome == "failed"
    assert report.error == "step 'fail': template '{{ labels.task_id }}': 'dict object' has no attribute 'task_id'"


async def test_parameter_count_mismatch_is_a_clear_failure(site: Site) -> None:
    seed_cape(site.cape)
    setup = site.setup(book(sql_step("fail", """query: "select $1::int, $2::int", params: ["1"]""")))
    report = await execute(setup)
    assert report.error == "step 'fail': the SQL has 2 parameters but 1 values were given"


async def test_all_sql_of_a_run_on_one_system_commits_or_rolls_back_together(site: Site) -> None:
    seed_cape(site.cape)
    first = sql_step("fail stale", f"statement: \"update tasks set status = 'failed_analysis' where {STALE}\"")
    broken = sql_step("then break", "statement: \"update tasks set timeout = 1 / 0\"")
    report = await execute(site.setup(book(first, broken)))
    assert [s.outcome for s in report.steps] == ["ok", "failed"]
    assert report.steps[0].rows == 5
    assert count(site.cape, STALE) == 5  # the first step's update was rolled back with the second's failure


async def test_batched_repair_runs_until_a_short_batch(site: Site) -> None:
    seed_cape(site.cape, stale=250)
    statement = (f"statement: \"update tasks set status = 'failed_analysis' where id in (select id from tasks "
                 f"where {STALE} order by id limit $1)\", batch_size: 100")
    setup = site.setup(book(sql_step("batched", statement)))
    preview = await execute(setup, dry_run=True)
    assert (preview.outcome, preview.steps[0].rows, preview.steps[0].detail["batches"]) == ("dry_run", 250, 3)
    assert count(site.cape, STALE) == 250
    report = await execute(setup)
    assert (report.outcome, report.steps[0].rows, report.steps[0].detail["batches"]) == ("succeeded", 250, 3)
    assert count(site.cape, STALE) == 0


async def test_batches_beyond_max_rows_are_refused_after_committed_batches(site: Site) -> None:
    seed_cape(site.cape, stale=250)
    statement = (f"statement: \"update tasks set status = 'failed_analysis' where id in (select id from tasks "
                 f"where {STALE} order by id limit $1)\", batch_size: 100, max_rows: 150")
    report = await execute(site.setup(book(sql_step("batched", statement))))
    assert report.outcome == "refused"
    assert count(site.cape, STALE) == 150  # batching gives up all-or-nothing: one batch of 100 stays done
