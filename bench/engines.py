"""Kill → detect for the job engines (RQ, and the engines described by configuration): one module
per engine, each with `measure(tmp, rounds)` and `report_line(result)`; `python -m bench` runs
them all after the other benchmarks."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import engine_arq, engine_bullmq, engine_dramatiq, engine_rq, engine_sidekiq
from deploy.local.servers import tempdir

ENGINES: dict[str, ModuleType] = {"rq": engine_rq, "dramatiq": engine_dramatiq, "bullmq": engine_bullmq,
                                  "sidekiq": engine_sidekiq, "arq": engine_arq}


def measure(tmp: Path, rounds: int = 3) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, module in ENGINES.items():
        print(f"{name} kill → detect ...", flush=True)
        out[f"engine_{name}"] = module.measure(tmp, rounds)
        print(out[f"engine_{name}"], flush=True)
    return out


def run(name: str, remove_tmp: bool = False) -> None:
    """`python -m bench.engine_<name>`: that engine alone, its numbers and its report line printed;
    its temporary directory removed afterwards if `remove_tmp`."""
    module = ENGINES[name]
    root = tempdir(f"taskmedic-bench-{name}-")
    try:
        m = module.measure(root)
        print(m)
        print(module.report_line(m))
    finally:
        if remove_tmp:
            shutil.rmtree(root, ignore_errors=True)


def report_lines(results: dict[str, Any]) -> list[str]:
    return [module.report_line(results[f"engine_{name}"]) for name, module in ENGINES.items()
            if f"engine_{name}" in results]


HOW = ("- Job engines kill → detect (bench/engine_*.py): for each engine two real workers, each on a long job; "
       "the real exporter (1 s interval) watches both; one worker's process group is SIGKILLed at a random point "
       "of the interval and /metrics is scraped every 100 ms until the profile's reason rises, then 10 s more for "
       "the live twin (bench.liveness.kill_and_watch). Engines' default timings unless the row says otherwise; "
       "their own recovery times are from their source and real runs (docs/engines.md).")
