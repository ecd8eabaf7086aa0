"""A real Celery app for the tests: Redis broker, late acks, one slow task."""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("taskmedic_tests", broker=os.environ["TASKMEDIC_TEST_BROKER"])
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True,
                task_default_queue="celery", worker_hijack_root_logger=False)


@app.task(name="slow")
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


@app.task(name="timesketch.lib.tasks.run_plaso")
def run_plaso(file_path: str, events: str, timeline_name: str, index_name: str, source_type: str,
              timeline_id: int) -> str:
    """Timesketch's import task, by name and signature (timesketch/lib/tasks.py): a long import."""
    time.sleep(3600)
    return index_name
