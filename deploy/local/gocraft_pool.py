"""A gocraft/work-style worker pool for the tests and the demo, written from gocraft's protocol
(not its code):

- heartbeat: `SADD <ns>:worker_pools <id>` and `HSET <ns>:worker_pools:<id>` heartbeat_at,
  started_at, job_names, concurrency, pid ... every `--beat` seconds (gocraft: 5 s);
- it announces its job types in `<ns>:known_jobs` and each type's `max_concurrency`;
- fetch, atomically (one Lua script): the first job type with queued jobs, not paused and under
  its max concurrency (`lock` < `max_concurrency`, 0 = no cap): `INCR lock`,
  `HINCRBY lock_info <pool> 1`, `RPOPLPUSH jobs:<type> jobs:<type>:<pool>:inprogress`;
- done, in one MULTI: `LREM` from in progress, `DECR lock`, `HINCRBY lock_info <pool> -1`; its
  Harbor side: `job_stats:<id>` status Success; the test's side: the id is appended to
  `<ns>:test:done`.

    python -m deploy.local.gocraft_pool REDIS_URL NAMESPACE POOL_ID TYPE=MAX[,TYPE=MAX...] [--work S] [--beat S]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time

import redis

FETCH = """
local pool = ARGV[1]
for i = 1, #KEYS, 5 do
  local queue, inprog, paused, lock, info = KEYS[i], KEYS[i+1], KEYS[i+2], KEYS[i+3], KEYS[i+4]
  local cap = tonumber(redis.call('get', queue .. ':max_concurrency')) or 0
  local held = tonumber(redis.call('get', lock)) or 0
  if redis.call('llen', queue) > 0 and not redis.call('get', paused) and (cap == 0 or held < cap) then
    redis.call('incr', lock)
    redis.call('hincrby', info, pool, 1)
    return {redis.call('rpoplpush', queue, inprog), queue}
  end
end
return nil
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("namespace")
    parser.add_argument("pool")
    parser.add_argument("types")
    parser.add_argument("--work", type=float, default=0.2)
    parser.add_argument("--beat", type=float, default=1.0)
    args = parser.parse_args()
    ns = args.namespace if args.namespace.endswith(":") else args.namespace + ":"
    caps = dict((t, int(c)) for t, c in (pair.split("=") for pair in args.types.split(",")))
    r = redis.Redis.from_url(args.url)
    r.sadd(ns + "known_jobs", *caps)
    for t, cap in caps.items():
        r.set(f"{ns}jobs:{t}:max_concurrency", cap)
    started = int(time.time())

    def heartbeat() -> None:
        while True:
            r.sadd(ns + "worker_pools", args.pool)
            r.hset(f"{ns}worker_pools:{args.pool}", mapping={
                "heartbeat_at": int(time.time()), "started_at": started, "job_names": ",".join(sorted(caps)),
                "concurrency": 1, "worker_ids": args.pool + "-w0", "host": socket.gethostname(), "pid": os.getpid()})
            time.sleep(args.beat)

    threading.Thread(target=heartbeat, daemon=True).start()
    fetch = r.register_script(FETCH)
    keys: list[str] = []
    for t in sorted(caps):
        queue = f"{ns}jobs:{t}"
        keys += [queue, f"{queue}:{args.pool}:inprogress", queue + ":paused", queue + ":lock", queue + ":lock_info"]
    while True:
        got = fetch(keys=keys, args=[args.pool])
        if not got:
            time.sleep(0.05)
            continue
        item, queue = got
        job_type = queue.decode().removeprefix(ns + "jobs:")
        job_id = json.loads(item)["id"]
        time.sleep(args.work)
        with r.pipeline(transaction=True) as pipe:
            pipe.lrem(f"{ns}jobs:{job_type}:{args.pool}:inprogress", 1, item)
            pipe.decr(f"{ns}jobs:{job_type}:lock")
            pipe.hincrby(f"{ns}jobs:{job_type}:lock_info", args.pool, -1)
            pipe.hset(f"{ns}job_stats:{job_id}", "status", "Success")
            pipe.rpush(ns + "test:done", job_id)
            pipe.execute()


if __name__ == "__main__":
    main()
