"""Send `sleep(seconds)` messages through the real broker; print one JSON line per message with the
message id and the redis_message_id (the member of dramatiq's queue list and acks sets).

Usage (dramatiq's venv python): enqueue.py SECONDS [SECONDS ...], with actors.py's environment.
"""

from __future__ import annotations

import json
import sys

from actors import sleep

for seconds in sys.argv[1:]:
    message = sleep.send(float(seconds))
    print(json.dumps({"message_id": message.message_id, "redis_message_id": message.options["redis_message_id"]}))
