"""kombu's Redis transport (Celery's Redis broker), as kombu/transport/redis.py writes it.

- A queue is a list; a message of priority step `s` > 0 goes to the sub-queue `<queue>\\x06\\x16<s>`.
  Producers LPUSH, consumers RPOP/BRPOP the sub-queues in `priority_steps` order.
- `_kombu.binding.<exchange>` is a set of `<routing key>\\x06\\x16<pattern>\\x06\\x16<queue>`.
- With acks emulated (acks_late), a delivered message sits in hash `unacked` under its delivery
  tag as JSON `[message, exchange, routing_key]`, its delivery time in sorted set `unacked_index`.
"""

from __future__ import annotations

import bisect
import contextlib
import json
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, NamedTuple

from pydantic import AfterValidator

SEP = b"\x06\x16"  # kombu's Channel.sep
UNACKED = "unacked"  # Channel.unacked_key
UNACKED_INDEX = "unacked_index"  # Channel.unacked_index_key
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)  # kombu's PRIORITY_STEPS
MIN_PRIORITY, MAX_PRIORITY = 0, 9  # kombu's virtual Channel.min_priority / max_priority


def _priority_steps(steps: list[int]) -> list[int]:
    """The transport option `priority_steps`. Step 0, the queue itself, is always one: kombu with
    a list lacking 0 never reads the bare queue yet files low priorities under the last step."""
    if any(not MIN_PRIORITY <= s <= MAX_PRIORITY for s in steps):
        raise ValueError(f"priority steps are priorities {MIN_PRIORITY}..{MAX_PRIORITY} "
                         f"(kombu's default: {list(DEFAULT_PRIORITY_STEPS)})")
    return sorted({0, *steps})


PrioritySteps = Annotated[list[int], AfterValidator(_priority_steps)]


def binding_key(exchange: str) -> str:
    """The set of an exchange's bindings (Channel.keyprefix_queue)."""
    return f"_kombu.binding.{exchange}"


class Binding(NamedTuple):
    routing_key: bytes
    pattern: bytes
    queue: bytes


def parse_binding(member: bytes | str) -> Binding | None:
    parts = (member.encode() if isinstance(member, str) else member).split(SEP)
    return Binding(*parts) if len(parts) == 3 else None


def bound_queues(bindings: Iterable[Binding], routing_key: bytes) -> list[bytes]:
    """Channel._lookup for a direct exchange (Celery's default): every queue bound with the key."""
    return sorted({b.queue for b in bindings if b.routing_key == routing_key and b.queue})


def message_priority(message: Any) -> int:
    """Channel._get_message_priority: `properties.priority` clamped to 0..9, 0 when unreadable."""
    try:
        return max(min(int(message["properties"]["priority"]), MAX_PRIORITY), MIN_PRIORITY)
    except (TypeError, ValueError, KeyError):
        return 0


def priority_step(priority: int, steps: Sequence[int]) -> int:
    """Channel.priority: the step at or below `priority` (steps ascending, starting at 0)."""
    return steps[bisect.bisect(steps, priority) - 1]


def sub_queue(queue: bytes, step: int) -> bytes:
    """Channel._q_for_pri after `priority`: step 0 is the queue itself."""
    return queue + SEP + str(step).encode() if step else queue


def sub_queue_for(queue: bytes, message: Any, steps: Sequence[int]) -> bytes:
    """The list kombu puts `message` on (and reads it from) for `queue`."""
    return sub_queue(queue, priority_step(message_priority(message), steps))


def sub_queues(queue: bytes, steps: Sequence[int]) -> list[bytes]:
    """Every list kombu reads for `queue`, in the order it reads them."""
    return [sub_queue(queue, s) for s in steps]


class Unacked(NamedTuple):
    message: Any  # the message dict, as published
    exchange: str
    routing_key: str


def parse_unacked(payload: bytes | str | None) -> Unacked | None:
    """An `unacked` hash value, or None when it is not a `[message, exchange, routing_key]`."""
    try:
        message, exchange, routing_key = json.loads(payload or b"")
    except (ValueError, TypeError):
        return None
    return Unacked(message, str(exchange or ""), str(routing_key or ""))


def redelivered(message: dict[str, Any]) -> dict[str, Any]:
    """The message marked redelivered, as Channel._do_restore_message marks it."""
    with contextlib.suppress(KeyError, TypeError):
        message["headers"]["redelivered"] = True
        message["properties"]["delivery_info"]["redelivered"] = True
    return message
