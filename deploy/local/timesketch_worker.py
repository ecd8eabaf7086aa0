"""The demo's Timesketch import worker: a real Celery worker whose import task has Timesketch's
name and signature (timesketch/lib/tasks.py run_plaso), importing for an hour."""

from __future__ import annotations

import os
import time

from celery import Celery

app = Celery("timesketch", broker=os.environ["TIMESKETCH_BROKER"])
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@app.task(name="timesketch.lib.tasks.run_plaso")
def run_plaso(file_path: str, events: str, timeline_name: str, index_name: str, source_type: str,
              timeline_id: int) -> str:
    time.sleep(3600)
    return index_name
