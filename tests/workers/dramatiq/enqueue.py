"""Send messages through the real broker; print one JSON line per message with the message id and
the redis_message_id (the member of dramatiq's queue list and acks sets).

Usage (dramatiq's venv python, with actors.py's environment):
  enqueue.py [--delay MS] SECONDS [SECONDS ...]   one `sleep(SECONDS)` each, delayed by MS if given
  enqueue.py --fail                               one `fail()`, a dead letter once a worker runs it
"""

from __future__ import annotations

import argparse
import json

from actors import fail, sleep

parser = argparse.ArgumentParser()
parser.add_argument("--delay", type=int, default=None, help="ms: the message waits in <queue>.DQ until then")
parser.add_argument("--fail", action="store_true")
parser.add_argument("seconds", nargs="*", type=float)
args = parser.parse_args()

sent = [fail.send()] if args.fail else [sleep.send_with_options(args=(s,), delay=args.delay) for s in args.seconds]
for message in sent:
    print(json.dumps({"message_id": message.message_id, "redis_message_id": message.options["redis_message_id"]}))
