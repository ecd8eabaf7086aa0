"""Jobs a real RQ worker runs in the tests."""

from __future__ import annotations

import time


def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"
