"""The broker and the one actor that real `dramatiq` workers run for taskmedic's tests.

Runs inside dramatiq's own venv (.cache/engines/dramatiq), never the project's: its redis-py pin
may differ. Configured by environment, set by tests/workers/dramatiq_harness.py:
TASKMEDIC_DRAMATIQ_REDIS_URL (broker), TASKMEDIC_DRAMATIQ_QUEUE (the actors' queue) and, in a
worker, TASKMEDIC_DRAMATIQ_ID_FILE (where the worker process writes its broker id, the member it
heartbeats under in `dramatiq:__heartbeats__` and the id in its `dramatiq:__acks__.<id>.<queue>` keys).
Optional, else dramatiq's defaults: TASKMEDIC_DRAMATIQ_HEARTBEAT_TIMEOUT (ms: how stale another
process' beat must be for this one's maintenance to give its acks back, default 60000) and
TASKMEDIC_DRAMATIQ_MAINTENANCE_CHANCE (per million broker calls, default 1000; 0: this process never
runs maintenance).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

# Markers live outside dramatiq's namespace so they never look like engine state.
MARKERS = "taskmedic-harness:dramatiq:"

_tuning = {name: int(os.environ[var]) for name, var in (
    ("heartbeat_timeout", "TASKMEDIC_DRAMATIQ_HEARTBEAT_TIMEOUT"),
    ("maintenance_chance", "TASKMEDIC_DRAMATIQ_MAINTENANCE_CHANCE")) if os.environ.get(var)}
broker = RedisBroker(url=os.environ["TASKMEDIC_DRAMATIQ_REDIS_URL"], **_tuning)
broker.add_middleware(CurrentMessage())
dramatiq.set_broker(broker)

if id_file := os.environ.get("TASKMEDIC_DRAMATIQ_ID_FILE"):
    Path(id_file).write_text(broker.broker_id)


def _markers() -> list[str]:
    """Where this run is marked: under its redis_message_id and, as `message:<message_id>`, under
    the id that survives a delayed message's move from `<queue>.DQ` to `<queue>` (a new redis id)."""
    message = CurrentMessage.get_current_message()
    assert message is not None
    return [MARKERS + str(message.options["redis_message_id"]), f"{MARKERS}message:{message.message_id}"]


@dramatiq.actor(queue_name=os.environ["TASKMEDIC_DRAMATIQ_QUEUE"], max_retries=0, time_limit=3_600_000)
def sleep(seconds: float) -> None:
    """Push this worker's broker id on `<marker>:started`, sleep, then on `<marker>:finished`."""
    markers = _markers()
    for marker in markers:
        broker.client.rpush(marker + ":started", broker.broker_id)
    time.sleep(seconds)
    for marker in markers:
        broker.client.rpush(marker + ":finished", broker.broker_id)


@dramatiq.actor(queue_name=os.environ["TASKMEDIC_DRAMATIQ_QUEUE"], max_retries=0)
def fail() -> None:
    """Raise: with no retries left dramatiq nacks it, a dead letter in `dramatiq:<queue>.XQ`."""
    raise RuntimeError("taskmedic harness: a job that fails")
