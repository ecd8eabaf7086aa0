"""The lease that keeps a run on one replica: it is renewed from the claim until the outcome is
recorded, and a replica that cannot renew it stops the run while the lease still holds, so no
other replica settles or re-runs a run that is still executing (lease: 3 s in these tests)."""

from __future__ import annotations

import time

import asyncpg

from tests.polling import await_until
from tests.remediator.kit import Site, StartApp, alert, payload, post, seed_cape, settled

# Counts the attempts that commit (tasks.timeout of the one task), then waits in the same
# transaction until the test creates `released`.
SLOW = """
name: slow-repair
match: {alertname: TaskmedicStuckTasks}
retry_interrupted: true
steps:
  - name: count the attempt
    sql: {system: cape, statement: "update tasks set timeout = timeout + 1", max_rows_after_write: true}
  - name: wait for the test
    sql: {system: cape, query: "select pg_sleep(case when to_regclass('released') is null then 30 else 0 end)"}
"""

SLEEPING = "select count(*) from pg_stat_activity where state = 'active' and query like 'select pg_sleep%'"


async def sleeping(cape: asyncpg.Connection) -> int:
    """Backends in the playbook's slow step."""
    return int(await cape.fetchval(SLEEPING))


async def execute_sql(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def stopped(cape: asyncpg.Connection) -> bool:
    return await sleeping(cape) == 0


async def test_a_run_whose_lease_cannot_be_renewed_is_cancelled_before_the_lease_expires(
        site: Site, start: StartApp) -> None:
    seed_cape(site.cape, stale=1, fresh=0)
    client = await start(site.setup(SLOW))
    assert (await post(client, payload()))[0] == 200
    cape = await asyncpg.connect(site.cape.dsn)
    journal = await asyncpg.connect(site.journal.dsn)
    try:
        await await_until(lambda: sleeping(cape), 20, "the run to be in its slow step")
        # Another session locks the run's row: every renewal now waits on it (up to the journal's
        # 10 s statement timeout), as it would behind a stuck vacuum or a hung connection pool.
        lock = journal.transaction()
        await lock.start()
        lease_until = await journal.fetchval("select lease_until from taskmedic_runs for update")
        await await_until(lambda: stopped(cape), 20, "the run to be cancelled")
        cancelled_at = await cape.fetchval("select clock_timestamp()")  # the same server's clock
        assert cancelled_at < lease_until, f"cancelled {cancelled_at - lease_until} after its lease expired"
        assert await cape.fetchval("select timeout from tasks") == 0  # rolled back
        await cape.execute("create table released ()")
        await lock.rollback()
    finally:
        await cape.close()
        await journal.close()
    # The replica notices the expired lease once the row is free and runs the playbook again.
    [run] = await settled(site)
    assert (run["outcome"], run["attempts"], run["history"][0]["outcome"]) == ("succeeded", 2, "interrupted")
    assert site.cape.sql("select timeout from tasks") == "1"  # executed to the end exactly once




async def test_the_lease_is_kept_while_the_outcome_is_written_so_no_other_replica_takes_the_run(
        site: Site, start: StartApp) -> None:
    seed_cape(site.cape, stale=1, fresh=0)
    site.cape.sql("create table released ()")  # no waiting in this test
    first = await start(site.setup(SLOW, replica="first"))
    await start(site.setup(SLOW, replica="second"))  # recovers any run whose lease expires
    # The journal refuses the first four attempts to record an outcome, for longer than a lease
    # (a failover, a full disk), while renewals go through.
    await execute_sql(site.journal.dsn, """
        create sequence finish_attempts;
        create function refuse_finish() returns trigger language plpgsql as $$
        begin
          if new.status = 'done' and old.status = 'running' and nextval('finish_attempts') <= 4 then
            raise exception 'journal hiccup';
          end if;
          return new;
        end $$;
        create trigger refuse_finish before update on taskmedic_runs
          for each row execute function refuse_finish()""")  # async: the replicas hold journal locks
    started = time.monotonic()
    assert (await post(first, payload(alert("slow"))))[0] == 200
    [run] = await settled(site)
    assert time.monotonic() - started > 3  # the outcome took longer than a lease to record
    assert (run["outcome"], run["attempts"], run["history"]) == ("succeeded", 1, [])
    assert site.journal.sql("select last_value from finish_attempts") == "5"
    assert site.cape.sql("select timeout from tasks") == "1"  # executed once
