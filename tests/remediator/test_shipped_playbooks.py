"""The playbooks shipped in rules/playbooks, validated and run against real CAPE and Timesketch
schemas: the stuck work is healed, the healthy-but-slow work is not touched."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import redis
import yaml

from remediator.config import load_setup
from tests.engines import engine_program, reaped, start_engine, start_look_alikes
from tests.polling import wait_until
from tests.remediator.kit import SHIPPED, Site, count, execute, seed_cape, shipped
from tests.services import PostgresServer
from tests.workers.celery_run import answers, celery_worker


def test_every_shipped_playbook_is_valid(site: Site, pg: PostgresServer) -> None:
    setup, _ = shipped(site, pg)
    names = {yaml.safe_load(book.read_text())["name"] for book in SHIPPED.glob("*.yml")}
    assert {p.name for p in setup.playbooks} == names
    assert names >= {"cape-fail-stale-pending", "timesketch-fail-orphaned-timelines", "dramatiq-give-back-held-work",
                     "bullmq-give-back-stalled-jobs", "sidekiq-capture-expiring-jobs", "arq-give-back-held-work"}


async def test_cape_playbook_fails_stale_pending_and_leaves_fresh_ones(site: Site, pg: PostgresServer) -> None:
    seed_cape(site.cape)
    setup, _ = shipped(site, pg)
    report = await execute(setup, playbook="cape-fail-stale-pending")
    assert (report.outcome, report.verify) == ("succeeded", 0), report.error
    assert report.targets is not None and len(report.targets.ids) == 5
    assert count(site.cape, "status = 'failed_analysis' and completed_on is not null") == 5
    assert count(site.cape, "status = 'pending'") == 2
    again = await execute(setup, playbook="cape-fail-stale-pending")
    assert again.outcome == "skipped"


async def test_timesketch_playbook_fails_orphaned_timelines_only(site: Site, pg: PostgresServer, tmp: Path) -> None:
    setup, timesketch = shipped(site, pg)
    timesketch.load("timesketch.sql")
    timesketch.sql("""insert into timeline (id, name, description) values (1, 'orphaned', ''), (2, 'slow', 'big');
                      insert into timeline_status (status, parent_id, created_at) values
                        ('new', 1, now() - interval '5 hours'), ('processing', 1, now() - interval '5 hours'),
                        ('processing', 2, now() - interval '20 seconds')""")  # 2: just handed to Celery
    labels = {"system": "timesketch", "reason": "worker_gone"}
    with celery_worker(site.redis_url, "idle", "idle", tmp):  # a live worker, importing neither
        wait_until(lambda: answers(site.redis_url), 60, "the worker to answer")
        preview = await execute(setup, labels, dry_run=True, playbook="timesketch-fail-orphaned-timelines")
        # found 1, described 1, detached its 2 attached rows, attached 1 fail row
        assert (preview.outcome, [s.rows for s in preview.steps]) == ("dry_run", [1, 1, 2, 1])
        report = await execute(setup, labels, playbook="timesketch-fail-orphaned-timelines")
    assert report.outcome == "succeeded", report.error
    # as Timesketch reads it: the rows still attached to each timeline
    attached = timesketch.sql("select parent_id, status from timeline_status where parent_id is not null "
                              "order by parent_id")
    assert attached.splitlines() == ["1|fail", "2|processing"]
    assert "import abandoned" in timesketch.sql("select description from timeline where id = 1")


async def test_scanner_playbook_terminates_only_tasks_whose_engine_is_gone(site: Site, pg: PostgresServer) -> None:
    """Only a PID still running the engine, created before its task started, keeps the task: a
    dead engine, a look-alike whose command line names the engine, and the engine on a PID its
    task predates (a reused PID) are zombies' PIDs. Nothing is signalled."""
    setup, _ = shipped(site, pg)
    scanner = site.cape
    scanner.load("scanner.sql")
    program = engine_program(site.tmp)
    dead, reused, alive = (start_engine(program) for _ in range(3))
    dead.kill()
    dead.wait()
    vim, note = start_look_alikes()
    with reaped(alive, reused, vim, note):
        scanner.sql(f"""insert into scan_tasks (target, state, engine_pid, started_at) values
                          ('zombie', 'Running', {dead.pid}, now() - interval '1 hour'),
                          ('alive', 'Running', {alive.pid}, now()),
                          ('vim', 'Running', {vim.pid}, now()),
                          ('reused', 'Running', {reused.pid}, now() - interval '1 hour')""")
        report = await execute(setup, {"system": "scanner", "reason": "process_gone"},
                               playbook="scanner-terminate-zombies")
        assert report.outcome == "succeeded", report.error
        assert report.targets is not None
        assert sorted(r["engine_pid"] for r in report.targets.rows) == sorted([dead.pid, vim.pid, reused.pid])
        assert scanner.sql("select target, state from scan_tasks order by id").splitlines() == \
            ["zombie|Terminated", "alive|Running", "vim|Terminated", "reused|Terminated"]
        assert all(p.poll() is None for p in (alive, reused, vim, note))  # nothing was signalled


async def test_scanner_playbook_is_refused_when_no_engine_is_visible(site: Site, pg: PostgresServer) -> None:
    """A remediator outside the scanner's PID namespace sees no engine at all: every task would
    look like a zombie, so nothing is judged and nothing changes. (The engine's name is made
    unique to this test, so engines of a demo running on the same machine stay out of it.)"""
    engine = f"scan-engine-{uuid.uuid4().hex}"
    setup, _ = shipped(site, pg, engine=engine)
    scanner = site.cape
    scanner.load("scanner.sql")
    look_alikes = start_look_alikes()  # processes are visible, just no engine among them
    with reaped(*look_alikes):
        scanner.sql(f"""insert into scan_tasks (target, state, engine_pid, started_at) values
                          ('a', 'Running', {look_alikes[0].pid}, now() - interval '1 hour'),
                          ('b', 'Running', 4000000, now() - interval '1 hour')""")
        report = await execute(setup, {"system": "scanner", "reason": "process_gone"},
                               playbook="scanner-terminate-zombies")
        assert (report.outcome, report.steps) == ("refused", [])
        assert report.error == (f"targets: scanner/process_gone: no process running the engine '{engine}' is "
                                "visible from here, so every task would look gone; run where the engines' PIDs "
                                "are visible")
        assert scanner.sql("select target, state from scan_tasks order by id").splitlines() == \
            ["a|Running", "b|Running"]


async def test_celery_playbook_requeues_only_messages_past_the_visibility_timeout(
        site: Site, pg: PostgresServer) -> None:
    import json
    import time

    import redis

    setup, _ = shipped(site, pg)
    r = redis.Redis.from_url(site.redis_url)
    for tag, age in (("dead", 7200), ("live", 60)):
        message = {"body": "", "headers": {"id": tag}, "properties": {"delivery_tag": tag, "delivery_info": {}}}
        r.hset("unacked", tag, json.dumps([message, "", "celery"]))
        r.zadd("unacked_index", {tag: time.time() - age})
    report = await execute(setup, {"system": "celery", "reason": "unacked_too_long"},
                           playbook="celery-requeue-stale-unacked")
    assert report.outcome == "succeeded", report.error
    assert r.hkeys("unacked") == [b"live"] and r.zrange("unacked_index", 0, -1) == [b"live"]
    (requeued,) = r.lrange("celery", 0, -1)
    body = json.loads(requeued)
    assert body["headers"] == {"id": "dead", "redelivered": True}


async def test_rq_playbook_moves_only_expired_started_jobs_to_failed(site: Site, pg: PostgresServer) -> None:
    import time

    import redis

    setup, _ = shipped(site, pg)
    r = redis.Redis.from_url(site.redis_url)
    r.sadd("rq:queues", "rq:queue:default")
    r.zadd("rq:wip:default", {"gone-1:exec-1": time.time() - 60, "busy-1": time.time() + 600})
    r.hset("rq:job:gone-1", "status", "started")
    report = await execute(setup, {"system": "rq", "reason": "abandoned"}, playbook="rq-fail-abandoned-jobs")
    assert report.outcome == "succeeded", report.error
    assert r.zrange("rq:wip:default", 0, -1) == [b"busy-1"]
    assert r.zscore("rq:failed:default", "gone-1") is not None
    assert r.hget("rq:job:gone-1", "status") == b"failed"


async def test_sysreptor_playbook_quarantines_only_the_truncated_backup(site: Site, pg: PostgresServer) -> None:
    import os
    import time
    import zipfile

    root = site.tmp / "backups"
    root.mkdir()
    for name in ("good.zip", "broken.zip", "writing.zip"):
        with zipfile.ZipFile(root / name, "w") as z:
            z.writestr("backup.jsonl", "x" * 50_000)
    with open(root / "broken.zip", "r+b") as f:
        f.truncate((root / "broken.zip").stat().st_size - 100)
    with open(root / "writing.zip", "r+b") as f:
        f.truncate(100)
    for name in ("good.zip", "broken.zip"):
        os.utime(root / name, (time.time() - 3600, time.time() - 3600))
    text = (SHIPPED / "sysreptor-quarantine-broken-backup.yml").read_text()
    text = text.replace("/srv/backups", str(root)).replace("dry_run: true", "dry_run: false").replace(
        '"/usr/local/bin/sysreptor-backup"', '"/bin/touch"').replace(f'"{root}"]', f'"{root}/new.zip"]')
    setup = load_setup(str(site.write(text, sections=f"backups:\n  sysreptor: {{path: '{root}', pattern: '*.zip'}}\n")))
    report = await execute(setup, {"alertname": "TaskmedicBackupInvalid", "backup": "sysreptor"})
    assert report.outcome == "succeeded", report.error
    assert report.targets is not None and report.targets.ids == ["broken.zip"]  # re-checked, as the exporter does
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == ["good.zip", "new.zip", "writing.zip"]
    assert [p.name.split(".zip")[0] for p in (root / "quarantine").iterdir()] == ["broken"]


async def test_cape_free_disk_dry_run_lists_only_finished_tasks_analyses(site: Site, pg: PostgresServer) -> None:
    seed_cape(site.cape, stale=0, fresh=1, reported=3)
    site.cape.sql("update tasks set completed_on = localtimestamp - interval '30 days' where status = 'reported'")
    analyses = site.tmp / "storage" / "analyses"
    for task_id in site.cape.sql("select id from tasks order by id").splitlines():
        (analyses / task_id).mkdir(parents=True)
        (analyses / task_id / "report.json").write_text("{}")
    storage = analyses.parent
    text = (SHIPPED / "cape-free-disk.yml").read_text().replace("/opt/CAPEv2/storage", str(storage))
    text = text.replace("free_ratio: 0.25", "free_ratio: 0.999")  # this test's disk is never that empty
    setup = load_setup(str(site.write(text, sections=f"disks:\n  - path: '{storage}'\n")))
    report = await execute(setup, {"alertname": "TaskmedicDiskSpaceLow", "path": str(storage)})
    assert report.outcome == "dry_run", report.error
    finished = site.cape.sql("select id from tasks where status = 'reported' order by id").splitlines()
    assert sorted(report.steps[1].detail["entries"]) == sorted(finished)
    assert len(list(analyses.iterdir())) == 4  # a dry run removes nothing


# --------------------------------------------------------------------------------------------
# The job engines' playbooks (profiles dramatiq, bullmq, sidekiq, arq), each system named like its
# profile: one dead holder and, where the engine has one per worker, one live holder, as each
# engine lays them out in Redis.

SIDEKIQ_DEAD, SIDEKIQ_LIVE = "host-a:111:dead0", "host-b:222:live0"


def sidekiq_job(jid: str, now: float) -> str:
    return json.dumps({"class": "HardJob", "args": [jid], "jid": jid, "queue": "default", "enqueued_at": now - 50})


def beat(url: str, identity: str, stop: threading.Event) -> None:
    """What a live Sidekiq process does every few seconds: write its beat and re-expire its keys."""
    client = redis.Redis.from_url(url)
    while not stop.wait(1.0):
        client.hset(identity, "beat", str(time.time()))
        client.expire(identity, 60)
        client.expire(f"{identity}:workers", 60)


def seed_engines(r: redis.Redis) -> dict[str, str]:
    """Each engine's work held by a dead and a live holder; the dead holder's job per playbook."""
    seconds, micros = r.time()
    now = seconds + micros / 1e6
    ms = int(now * 1000)
    # Dramatiq: ack sets per worker and queue, beats in one sorted set (ms)
    r.hset("dramatiq:default.msgs", mapping={m: json.dumps({"message_id": m, "message_timestamp": ms - 90_000})
                                             for m in ("m-dead", "m-live")})
    r.sadd("dramatiq:__acks__.deadworker.default", "m-dead")
    r.sadd("dramatiq:__acks__.liveworker.default", "m-live")
    r.zadd("dramatiq:__heartbeats__", {"deadworker": ms - 120_000, "liveworker": ms})
    # BullMQ: the active list, a lock per running job (job 2's worker lives)
    r.hset("bull:mail:meta", "opts.maxLenEvents", "10000")
    for job in ("1", "2"):
        r.hset(f"bull:mail:{job}", mapping={"name": "send", "data": "{}", "timestamp": str(ms - 60_000)})
        r.lpush("bull:mail:active", job)
    r.set("bull:mail:2:lock", "worker-token", px=30_000)
    # Sidekiq: processes beat into their hash (s); their running jobs' only copy is <identity>:workers
    r.sadd("queues", "default")
    r.sadd("processes", SIDEKIQ_DEAD, SIDEKIQ_LIVE)
    for identity, jid, beat in ((SIDEKIQ_DEAD, "jid-dead", now - 30), (SIDEKIQ_LIVE, "jid-live", now)):
        r.hset(identity, mapping={"beat": str(beat), "busy": "1", "quiet": "false"})
        r.hset(f"{identity}:workers", "tid-1",
               json.dumps({"queue": "default", "payload": sidekiq_job(jid, now), "run_at": int(now) - 40}))
        for key in (identity, f"{identity}:workers"):  # each beat re-expires them to 60 s
            r.expire(key, int(60 - (now - beat)))
    # arq: a running job stays in the queue, marked in progress; no worker wrote the health check
    r.zadd("arq:queue", {"arq-job": ms - 600_000})
    r.set("arq:in-progress:arq-job", "1", px=300_000)
    return {"dramatiq-give-back-held-work": "m-dead", "bullmq-give-back-stalled-jobs": "1",
            "sidekiq-capture-expiring-jobs": "jid-dead", "arq-give-back-held-work": "arq-job"}


async def test_engine_playbooks_find_only_work_whose_holder_is_dead(site: Site, pg: PostgresServer) -> None:
    """Each engine playbook, as shipped, acts on its system's dead holder only; a dry run changes
    nothing."""
    setup, _ = shipped(site, pg)
    r = redis.Redis.from_url(site.redis_url)
    expected = seed_engines(r)
    before = {key: r.dump(key) for key in r.scan_iter()}
    for name, job in expected.items():
        book = setup.playbook(name)
        assert book is not None
        labels = {key: value for key, value in book.match.items() if value is not None}
        report = await execute(setup, labels, dry_run=True, playbook=name)
        assert report.outcome == "dry_run", (name, report.error)
        (step,) = report.steps
        assert step.rows == 1 and list(step.detail["given_back"].values()) == [[job]], (name, step.detail)
    assert {key: r.dump(key) for key in r.scan_iter()} == before


async def test_sidekiq_playbook_captures_the_jobs_of_a_dead_process_before_they_expire(
        site: Site, pg: PostgresServer) -> None:
    """The dead process' job goes back onto its queue, where a consumer fetching as Sidekiq does
    (BRPOP) takes it next; the process is forgotten; the live process and its job are untouched."""
    setup, _ = shipped(site, pg)
    r = redis.Redis.from_url(site.redis_url)
    seed_engines(r)
    live_before = r.hgetall(f"{SIDEKIQ_LIVE}:workers")
    dead_payload = json.loads(r.hget(f"{SIDEKIQ_DEAD}:workers", "tid-1") or b"{}")["payload"]
    fetched: list[bytes] = []
    consumer = threading.Thread(target=lambda: fetched.extend(
        redis.Redis.from_url(site.redis_url).brpop(["queue:default"], timeout=30) or []))
    consumer.start()
    stop = threading.Event()
    beating = threading.Thread(target=beat, args=(site.redis_url, SIDEKIQ_LIVE, stop), daemon=True)  # through `watch`
    beating.start()
    try:
        report = await execute(setup, {"alertname": "TaskmedicHeldWorkExpiring", "system": "sidekiq",
                                       "reason": "expiring"}, playbook="sidekiq-capture-expiring-jobs")
    finally:
        if not fetched:
            r.rpush("queue:default", "{}")  # let the consumer go when nothing was captured
        consumer.join(timeout=35)
    assert report.outcome == "succeeded", report.error
    assert fetched == [b"queue:default", dead_payload.encode()]
    assert not r.exists(SIDEKIQ_DEAD, f"{SIDEKIQ_DEAD}:workers")
    assert r.smembers("processes") == {SIDEKIQ_LIVE.encode()}
    assert r.hgetall(f"{SIDEKIQ_LIVE}:workers") == live_before
    try:
        again = await execute(setup, {"alertname": "TaskmedicHeldWorkExpiring", "system": "sidekiq",
                                      "reason": "expiring"}, playbook="sidekiq-capture-expiring-jobs")
    finally:
        stop.set()
        beating.join()
    assert again.outcome == "skipped"
