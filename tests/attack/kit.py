"""Helpers of the adversary's tests: a config naming one system per engine profile (with
overrides), the exporter's judgement of it, and a run of one `engine` step."""

from __future__ import annotations

from pathlib import Path

import redis

from exporter.snapshot import CollectorResult
from remediator.config import load_setup
from remediator.engine import Report
from tests.exporter.helpers import collect
from tests.remediator.kit import Site, execute


def engine_system(name: str, profile: str, url: str, override: str = "") -> str:
    extra = f", queues: {{engine: {override}}}" if override else ""
    return f"  {name}: {{profile: {profile}, redis: '{url}'{extra}}}\n"


def step_playbook(system: str, window: str = "3s", max_items: int = 100, watch: str = "0s") -> str:
    return f"""
name: give-back-{system}
match:
  alertname: TaskmedicStuckTasks
  system: {system}
steps:
  - name: give back
    engine: {{system: {system}, window: {window}, max_items: {max_items}, watch: {watch}}}
"""


async def run_step(site: Site, profile: str, override: str = "", dry_run: bool = False,
                   labels: dict[str, str] | None = None, **step: object) -> Report:
    systems = engine_system(profile, profile, site.redis_url, override)
    setup = load_setup(str(site.write(step_playbook(profile, **step), systems=systems)))  # type: ignore[arg-type]
    return await execute(setup, {"system": profile, **(labels or {})}, dry_run=dry_run)


async def judge(tmp: Path, url: str, profile: str, override: str = "") -> CollectorResult:
    results = await collect(tmp, "systems:\n" + engine_system(profile, profile, url, override))
    return next(r for name, r in results.items() if profile in name)


def redis_time_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000
