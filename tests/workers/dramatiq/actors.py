"""The broker and the one actor that real `dramatiq` workers run for taskmedic's tests.

Runs inside dramatiq's own venv (.cache/engines/dramatiq), never the project's: its redis-py pin
may differ. Configured by environment, set by tests/workers/dramatiq_harness.py:
TASKMEDIC_DRAMATIQ_REDIS_URL (broker), TASKMEDIC_DRAMATIQ_QUEUE (the actor's queue) and, in a
worker, TASKMEDIC_DRAMATIQ_ID_FILE (where the worker process writes its broker id, the member it
heartbeats under in `dramatiq:__heartbeats__` and the id in its `dramatiq:__acks__.<id>.<queue>` keys).
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

broker = RedisBroker(url=os.environ["TASKMEDIC_DRAMATIQ_REDIS_URL"])
broker.add_middleware(CurrentMessage())
dramatiq.set_broker(broker)

if id_file := os.environ.get("TASKMEDIC_DRAMATIQ_ID_FILE"):
    Path(id_file).write_text(broker.broker_id)


def _redis_message_id() -> str:
    message = CurrentMessage.get_current_message()
    assert message is not None
    return str(message.options["redis_message_id"])


@dramatiq.actor(queue_name=os.environ["TASKMEDIC_DRAMATIQ_QUEUE"], max_retries=0, time_limit=3_600_000)
def sleep(seconds: float) -> None:
    """Push this worker's broker id on `<MARKERS><redis_message_id>:started`, sleep, then on `:finished`."""
    markers = MARKERS + _redis_message_id()
    broker.client.rpush(markers + ":started", broker.broker_id)
    time.sleep(seconds)
    broker.client.rpush(markers + ":finished", broker.broker_id)
