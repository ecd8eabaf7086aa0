"""The alert as the remediator's domain knows it, and what a run of a playbook can end as.

Kept apart from matching and the step types so the journal and the webhook, which only carry
alerts and outcomes, import neither the playbook model nor any step type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

# The contract's outcomes: `refused` a guard stopped it, `suppressed` cooldown / circuit breaker /
# pause, `skipped` nothing to do, `interrupted` its replica stopped mid-run.
Outcome = Literal["succeeded", "failed", "dry_run", "refused", "suppressed", "skipped", "interrupted"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


@dataclass(frozen=True)
class AlertInfo:
    """One alert, as received and as journaled: what templates and matchers see."""

    fingerprint: str
    status: str
    starts_at: datetime
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    ends_at: datetime | None = None
    generator_url: str = ""

    def variables(self) -> dict[str, Any]:
        return {"labels": dict(self.labels), "annotations": dict(self.annotations),
                "alert": {"status": self.status, "startsAt": self.starts_at.isoformat(),
                          "endsAt": self.ends_at.isoformat() if self.ends_at else "",
                          "fingerprint": self.fingerprint, "generatorURL": self.generator_url}}
