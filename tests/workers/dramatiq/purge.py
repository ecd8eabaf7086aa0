"""Purge a queue the way an operator does with dramatiq: `broker.flush(queue)`, its `purge` command
(the queue list, its `.msgs` hash and dead letters deleted; other processes' acks sets are left).

Usage (dramatiq's venv python, with actors.py's environment): purge.py QUEUE
"""

from __future__ import annotations

import sys

from actors import broker

broker.flush(sys.argv[1])
