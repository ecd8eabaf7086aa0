"""Two runs at once on the same dead holders (two replicas' playbooks on one system, or an
operator's own playbook next to the shipped one): each job is given back exactly once."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import redis

from remediator.config import load_setup
from tests.attack.kit import engine_system, redis_time_ms, step_playbook
from tests.remediator.kit import Site, execute


def seed(r: redis.Redis) -> list[str]:
    ms = redis_time_ms(r)
    messages = []
    for w in range(4):
        r.zadd("dramatiq:__heartbeats__", {f"dead{w}": ms - 120_000})
        for q in ("q1", "q2"):
            for i in range(5):
                m = f"m-{w}-{q}-{i}"
                r.hset(f"dramatiq:{q}.msgs", m, json.dumps({"message_timestamp": ms}))
                r.sadd(f"dramatiq:__acks__.dead{w}.{q}", m)
                messages.append(m)
    s = int(ms / 1000)
    r.sadd("processes", "h:1:dead")
    r.hset("h:1:dead", "beat", str(s - 30))
    r.expire("h:1:dead", 30)  # its last beat, 30 s ago, re-expired it to 60 s
    for t in range(5):
        job = json.dumps({"jid": f"jid-{t}", "queue": "default", "class": "J", "args": []})
        r.hset("h:1:dead:workers", f"tid-{t}", json.dumps({"queue": "default", "payload": job}))
    for j in range(10):
        r.hset(f"bull:mail:{j}", mapping={"timestamp": str(ms)})
        r.lpush("bull:mail:active", str(j))
    r.hset("bull:mail:meta", "x", "y")
    return messages


async def test_four_runs_at_once_give_each_job_back_once(site: Site) -> None:
    r = redis.Redis.from_url(site.redis_url)
    messages = seed(r)
    systems = "".join(engine_system(p, p, site.redis_url) for p in ("dramatiq", "sidekiq", "bullmq"))
    setup = load_setup(str(site.write(*(step_playbook(p, window="1s") for p in ("dramatiq", "sidekiq", "bullmq")),
                                      systems=systems)))
    runs = [execute(setup, {"system": p}, playbook=f"give-back-{p}") for p in ("dramatiq", "sidekiq", "bullmq")
            for _ in range(4)]
    reports = await asyncio.gather(*runs)
    pushed = Counter(m.decode() for q in ("q1", "q2") for m in r.lrange(f"dramatiq:{q}", 0, -1))
    assert pushed == Counter(messages), [(x.outcome, x.error) for x in reports]
    jids = Counter(json.loads(m)["jid"] for m in r.lrange("queue:default", 0, -1))
    assert jids == Counter(f"jid-{t}" for t in range(5))
    assert Counter(r.lrange("bull:mail:wait", 0, -1)) == Counter(str(j).encode() for j in range(10))
    assert r.llen("bull:mail:active") == 0 and not r.exists("h:1:dead:workers")
    assert all(r.hget(f"bull:mail:{j}", "stc") == b"1" for j in range(10))
