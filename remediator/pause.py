"""Stopping the robot: remediation paused globally or per playbook, stored in the journal (table
`taskmedic_pauses`) so every replica sees it and a restart keeps it.

While a pause applies, alerts are still journaled (nothing is lost, the audit trail shows what
would have run) and their runs end `suppressed` with the pause's reason. A pause may carry an
expiry (`for: 2h`); without one it lasts until resumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from remediator.journal import Journal

GLOBAL = "*"  # the scope of a pause of every playbook

_ACTIVE = "(until is null or until > now())"


@dataclass(frozen=True)
class Pause:
    scope: str  # a playbook name, or "*" for all
    paused_at: datetime
    paused_by: str
    reason: str
    until: datetime | None

    def describe(self) -> str:
        what = "all playbooks" if self.scope == GLOBAL else f"playbook {self.scope}"
        since = self.paused_at.isoformat(timespec="seconds")
        text = f"paused: {what} since {since}" + (f" by {self.paused_by}" if self.paused_by else "")
        if self.until is not None:
            text += f" until {self.until.isoformat(timespec='seconds')}"
        return text + (f" ({self.reason})" if self.reason else "")

    def as_json(self) -> dict[str, Any]:
        return {"scope": self.scope, "paused_at": self.paused_at.isoformat(), "paused_by": self.paused_by,
                "reason": self.reason, "until": self.until.isoformat() if self.until else None}


class Pauses:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def pause(self, scope: str, by: str, reason: str, seconds: float | None) -> Pause:
        async with self.journal.connection() as conn:
            row = await conn.fetchrow(
                "insert into taskmedic_pauses (scope, paused_by, reason, until)"
                " values ($1, $2, $3, now() + make_interval(secs => $4::float8))"
                " on conflict (scope) do update set paused_at = now(), paused_by = excluded.paused_by,"
                " reason = excluded.reason, until = excluded.until returning *", scope, by, reason, seconds)
        return Pause(**dict(row))

    async def resume(self, scope: str) -> bool:
        async with self.journal.connection() as conn:
            return bool(await conn.fetchval("delete from taskmedic_pauses where scope = $1 returning true", scope))

    async def active(self) -> list[Pause]:
        async with self.journal.connection() as conn:
            rows = await conn.fetch(f"select * from taskmedic_pauses where {_ACTIVE} order by scope")
        return [Pause(**dict(r)) for r in rows]

    async def applying_to(self, playbook: str) -> Pause | None:
        """The pause that holds this playbook back (its own, else the global one), if any."""
        async with self.journal.connection() as conn:
            row = await conn.fetchrow(f"select * from taskmedic_pauses where scope = any($1::text[]) and {_ACTIVE}"
                                      " order by scope = $2 desc limit 1", [playbook, GLOBAL], playbook)
        return Pause(**dict(row)) if row is not None else None
