"""max_rows bounds the work before it happens: a query reads at most max_rows + 1 rows, a
statement writes only keys selected (at most max_rows + 1 read) beforehand, an unbounded
statement is refused by `check`, and a refused run says which side effects stayed done."""

from __future__ import annotations

import redis
from pytest import CaptureFixture

from remediator.cli import main
from tests.conftest import Database
from tests.remediator.kit import Site, StartApp, execute, payload, post, seed_cape, settled

# Every row the server produces for the query, or writes, advances a sequence (which no rollback undoes).
BIG = """
create table big (id bigint primary key, v int not null default 0);
insert into big (id) select g from generate_series(1, {n}) g;
create sequence touched;
create function count_write() returns trigger language plpgsql as
  $$ begin perform nextval('touched'); return new; end $$;
create trigger count_write before update on big for each row execute function count_write();
"""


def touched(db: Database) -> int:
    return int(db.sql("select case when is_called then last_value else 0 end from touched"))


def book(step: str, before: str = "") -> str:
    return f"""
name: big
match: {{alertname: TaskmedicStuckTasks}}
steps:
{before}  - name: bump
    sql:
      system: cape
{step}"""


async def test_a_query_with_max_rows_100_reads_101_of_500000_rows_and_is_refused(site: Site) -> None:
    site.cape.sql(BIG.format(n=500_000))
    report = await execute(site.setup(book("""      query: "select id, nextval('touched') from big"
      max_rows: 100
""")))
    assert touched(site.cape) == 101  # rows the server produced: not 500,000 held in the replica's memory
    assert report.outcome == "refused"
    assert report.error == "step 'bump': the query returned more than max_rows 100 rows; refused"


async def test_an_update_over_max_rows_is_refused_before_one_row_is_written(site: Site) -> None:
    site.cape.sql(BIG.format(n=200_000))
    report = await execute(site.setup(book("""      keys: "select id from big"
      statement: "update big set v = v + 1 where id = any($1)"
      max_rows: 100
""")))
    assert (report.outcome, report.steps[0].detail["keys"]) == ("refused", 101)
    assert report.error == ("step 'bump': more than max_rows 100 rows would be affected; refused before anything "
                            "was written")
    assert touched(site.cape) == 0
    assert site.cape.sql("select n_dead_tup from pg_stat_user_tables where relname = 'big'") == "0"


async def test_the_keys_it_selected_are_all_a_statement_writes(site: Site) -> None:
    site.cape.sql(BIG.format(n=1000))
    report = await execute(site.setup(book("""      keys: "select id from big where id <= 100"
      statement: "update big set v = v + 1 where id = any($1)"
      max_rows: 100
""")))
    assert (report.outcome, report.steps[0].rows) == ("succeeded", 100)
    assert site.cape.sql("select count(*) from big where v = 1") == "100"


def test_check_refuses_a_statement_whose_write_max_rows_cannot_bound(site: Site, capsys: CaptureFixture[str]) -> None:
    path = site.write(book("""      statement: "update big set v = v + 1"
      max_rows: 100
"""))
    assert main(["check", "--config", str(path)]) == 1
    assert "p0.yml:6: steps[0].sql: a statement must be bounded before it writes" in capsys.readouterr().err


async def test_max_rows_after_write_keeps_the_old_unbounded_statement_on_request(site: Site) -> None:
    site.cape.sql(BIG.format(n=1000))
    report = await execute(site.setup(book("""      statement: "update big set v = v + 1"
      max_rows: 100
      max_rows_after_write: true
""")))
    assert report.outcome == "refused"
    assert touched(site.cape) == 1000  # written and locked, then rolled back: what the opt-in accepts
    assert site.cape.sql("select count(*) from big where v = 1") == "0"


async def test_an_rpush_before_a_refused_update_is_reported_as_kept(site: Site, start: StartApp) -> None:
    seed_cape(site.cape)
    site.cape.sql(BIG.format(n=1000))
    push = """  - name: requeue
    redis: {system: jobs, rpush: {key: celery, values: [a, b, c]}}
"""
    client = await start(site.setup(book("""      keys: "select id from big"
      statement: "update big set v = v + 1 where id = any($1)"
      max_rows: 100
""", before=push)))
    await post(client, payload())
    [run] = await settled(site)
    assert run["outcome"] == "refused"
    assert run["error"] == ("step 'bump': more than max_rows 100 rows would be affected; refused before anything was "
                            "written; kept, not rolled back: step 'requeue' (redis, 3 affected)")
    assert redis.Redis.from_url(site.redis_url).llen("celery") == 3
