"""Enqueues one `sleep_job` with arq's own client and prints its job id.
Usage: python enqueue.py REDIS_URL QUEUE SECONDS"""

from __future__ import annotations

import asyncio
import sys

from arq.connections import RedisSettings, create_pool


async def enqueue(redis_url: str, queue: str, seconds: float) -> str:
    pool = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=queue)
    try:
        job = await pool.enqueue_job("sleep_job", seconds, _queue_name=queue)
        assert job is not None
        return job.job_id
    finally:
        await pool.aclose()


if __name__ == "__main__":
    print(asyncio.run(enqueue(sys.argv[1], sys.argv[2], float(sys.argv[3]))))
