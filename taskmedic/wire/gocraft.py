"""gocraft/work's Redis layout under a namespace, as Harbor's job service uses it
(gocraft/work redis.go; Harbor jobservice/common/rds/keys.go).

`jobs:<TYPE>` lists take new jobs on the left and are consumed from the right; a pool moves the
job it runs to `jobs:<TYPE>:<pool>:inprogress`. `known_jobs` is the set of job types and
`worker_pools` the set of pool ids. Each job entry is JSON with its `id` and enqueue time `t`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """The key names under one namespace (`harbor_job_service_namespace`, with or without ':')."""

    namespace: str

    @property
    def prefix(self) -> str:
        return self.namespace if self.namespace.endswith(":") else self.namespace + ":"

    @property
    def known_jobs(self) -> str:
        return self.prefix + "known_jobs"

    @property
    def worker_pools(self) -> str:
        return self.prefix + "worker_pools"

    @property
    def job_track(self) -> str:
        """Harbor's hash of jobs it tracks as in progress (job id → its stats key)."""
        return self.prefix + "job_track:inprogress"

    def heartbeat(self, pool: str) -> str:
        return f"{self.prefix}worker_pools:{pool}"

    def jobs(self, job_type: str) -> str:
        return f"{self.prefix}jobs:{job_type}"

    def in_progress(self, job_type: str, pool: str) -> str:
        return f"{self.jobs(job_type)}:{pool}:inprogress"

    def lock(self, job_type: str) -> str:
        """How many jobs of this type run now, across pools (checked against max_concurrency)."""
        return self.jobs(job_type) + ":lock"

    def lock_info(self, job_type: str) -> str:
        """Hash pool id → how many of the type's `lock` that pool holds."""
        return self.jobs(job_type) + ":lock_info"

    def max_concurrency(self, job_type: str) -> str:
        return self.jobs(job_type) + ":max_concurrency"

    def paused(self, job_type: str) -> str:
        return self.jobs(job_type) + ":paused"

    def job_stats(self, job_id: str) -> str:
        return f"{self.prefix}job_stats:{job_id}"


def _entry(raw: bytes | str | None) -> dict[str, object] | None:
    try:
        value = json.loads(raw or b"")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def enqueued_at(raw: bytes | str | None) -> float | None:
    """A job entry's enqueue time `t` (unix seconds), None when unreadable."""
    at = (_entry(raw) or {}).get("t")
    try:
        return float(at) if isinstance(at, int | float | str) else None
    except ValueError:
        return None


def job_id(raw: bytes | str | None) -> str | None:
    """A job entry's `id`, None when unreadable."""
    entry = _entry(raw)
    return str(entry["id"]) if entry is not None and entry.get("id") else None
