"""Jobs a real RQ worker runs in the tests."""

from __future__ import annotations

import os
import time


def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def slow_first_time(seconds: float, marker: str) -> str:
    """Slow the first time it runs (it leaves `marker`), quick when it runs again."""
    if os.path.exists(marker):
        return "again"
    with open(marker, "w"):
        pass
    time.sleep(seconds)
    return "done"
