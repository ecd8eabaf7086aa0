"""The `redis` step against a real Redis: surgical removals and requeues, counted and guarded."""

from __future__ import annotations

import json

import redis

from tests.remediator.kit import Site, execute, trusting_labels


def book(operation: str, max_items: int = 1000) -> str:
    return trusting_labels("name: t\nmatch: {alertname: TaskmedicStuckTasks}\nsteps:\n  - name: queue surgery\n"
                           f"    redis: {{system: jobs, max_items: {max_items}, {operation}}}\n")


def celery_queue(url: str, ids: list[str]) -> redis.Redis:
    client = redis.Redis.from_url(url)
    for task_id in ids:
        client.rpush("celery", json.dumps({"body": "", "headers": {"id": task_id, "task": "work"},
                                           "properties": {"delivery_tag": f"d-{task_id}"}}))
    return client


def ids_in(client: redis.Redis, key: str) -> list[str]:
    return [json.loads(item)["headers"]["id"] for item in client.lrange(key, 0, -1)]


async def test_only_the_messages_of_the_stuck_task_leave_the_queue(site: Site) -> None:
    client = celery_queue(site.redis_url, ["a", "stuck", "b", "stuck"])
    setup = site.setup(book('lrem_where: {key: celery, field: headers.id, equals: "{{ labels.task_id }}"}'))
    report = await execute(setup, {"task_id": "stuck"})
    assert (report.outcome, report.steps[0].rows) == ("succeeded", 2)
    assert ids_in(client, "celery") == ["a", "b"]


async def test_dry_run_counts_and_changes_nothing(site: Site) -> None:
    client = celery_queue(site.redis_url, ["a", "stuck"])
    setup = site.setup(book('lrem_where: {key: celery, field: headers.id, equals: "{{ labels.task_id }}"}'))
    report = await execute(setup, {"task_id": "stuck"}, dry_run=True)
    assert (report.outcome, report.steps[0].rows) == ("dry_run", 1)
    assert ids_in(client, "celery") == ["a", "stuck"]


async def test_more_items_than_max_items_is_refused_untouched(site: Site) -> None:
    client = celery_queue(site.redis_url, ["x", "x", "x"])
    setup = site.setup(book('lrem_where: {key: celery, field: headers.id, equals: "x"}', max_items=2))
    report = await execute(setup)
    assert report.outcome == "refused"
    assert report.error == "step 'queue surgery': lrem_where would touch 3 items, more than max_items 2"
    assert client.llen("celery") == 3


async def test_a_label_with_glob_characters_deletes_only_its_own_key(site: Site) -> None:
    client = redis.Redis.from_url(site.redis_url)
    client.mset({"celery-task-meta-1": "{}", "celery-task-meta-2": "{}", "celery-task-meta-*": "{}"})
    setup = site.setup(book('delete: {pattern: "celery-task-meta-{{ labels.task_id }}"}'))
    report = await execute(setup, {"task_id": "*"})
    assert (report.outcome, report.steps[0].rows) == ("succeeded", 1)
    assert sorted(client.keys("celery-task-meta-*")) == [b"celery-task-meta-1", b"celery-task-meta-2"]


def scans(client: redis.Redis) -> int:
    """SCAN commands the server has run so far (its own command statistics)."""
    stats: dict[str, dict[str, int]] = client.info("commandstats")
    return int(stats.get("cmdstat_scan", {}).get("calls", 0))


async def test_a_key_named_in_full_is_deleted_by_name_without_scanning_the_keyspace(site: Site) -> None:
    client = redis.Redis.from_url(site.redis_url)
    client.mset({f"celery-task-meta-{i}": "{}" for i in range(50)} | {"celery-task-meta-*": "{}"})
    setup = site.setup(book('delete: {pattern: "celery-task-meta-{{ labels.task_id }}"}'))
    before = scans(client)
    for task_id, rows in (("7", 1), ("7", 0), ("*", 1)):  # "*" from a label is a literal character
        report = await execute(setup, {"task_id": task_id})
        assert (report.outcome, report.steps[0].rows) == ("succeeded" if rows else "skipped", rows), task_id
    assert scans(client) == before
    assert client.dbsize() == 49 and not client.exists("celery-task-meta-7", "celery-task-meta-*")
    sweep = await execute(site.setup(book('delete: {pattern: "celery-task-meta-1*"}')))
    assert (sweep.outcome, sweep.steps[0].rows) == ("succeeded", 11)  # a real pattern is still a SCAN
    assert scans(client) > before


async def test_harbor_job_entries_are_removed_from_hash_and_sorted_set(site: Site) -> None:
    client = redis.Redis.from_url(site.redis_url)
    ns = "{harbor_job_service_namespace}"
    client.hset(f"{ns}:job_track:inprogress", mapping={"job1": "1", "job2": "1"})
    client.zadd(f"{ns}:period:policies", {"job1": 1.0, "job2": 2.0})
    hdel = site.setup(book(f'hdel: {{key: "{ns}:job_track:inprogress", fields: ["{{{{ labels.job_id }}}}"]}}'))
    zrem = site.setup(book(f'zrem: {{key: "{ns}:period:policies", members: ["{{{{ labels.job_id }}}}"]}}'))
    assert (await execute(hdel, {"job_id": "job1"})).steps[0].rows == 1
    assert (await execute(zrem, {"job_id": "job1"})).steps[0].rows == 1
    assert client.hkeys(f"{ns}:job_track:inprogress") == [b"job2"]
    assert client.zrange(f"{ns}:period:policies", 0, -1) == [b"job2"]


async def test_a_lost_job_is_requeued(site: Site) -> None:
    client = redis.Redis.from_url(site.redis_url)
    client.rpush("rq:queue:default", "job-a")
    report = await execute(site.setup(book('lpush: {key: "rq:queue:default", values: ["{{ labels.job }}"]}')),
                           {"job": "job-lost"})
    assert report.outcome == "succeeded"
    assert client.lrange("rq:queue:default", 0, -1) == [b"job-lost", b"job-a"]


async def test_a_stream_message_is_acknowledged(site: Site) -> None:
    client = redis.Redis.from_url(site.redis_url, decode_responses=True)
    message = str(client.xadd("events", {"k": "v"}))
    client.xgroup_create("events", "workers", id="0")
    client.xreadgroup("workers", "w1", {"events": ">"})
    assert client.xpending("events", "workers")["pending"] == 1
    report = await execute(site.setup(book('xack: {key: events, group: workers, ids: ["{{ labels.msg }}"]}')),
                           {"msg": message})
    assert report.outcome == "succeeded"
    assert client.xpending("events", "workers")["pending"] == 0


async def test_a_redis_check_skips_an_empty_queue_and_verifies_a_drained_one(site: Site) -> None:
    checks = ("precheck: {redis: {system: jobs, count: llen, key: celery}}\n"
              "verify: {redis: {system: jobs, count: llen, key: celery, expect: 1}}\n")
    setup = site.setup(book('lrem_where: {key: celery, field: headers.id, equals: "{{ labels.task_id }}"}') + checks)
    assert (await execute(setup, {"task_id": "stuck"})).outcome == "skipped"
    client = celery_queue(site.redis_url, ["stuck", "fine"])
    report = await execute(setup, {"task_id": "stuck"})
    assert (report.outcome, report.precheck, report.verify) == ("succeeded", 2, 1)
    assert ids_in(client, "celery") == ["fine"]
