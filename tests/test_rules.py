"""The alert rules as shipped: valid, unit-tested with the real promtool, fully annotated."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

RULES = Path(__file__).resolve().parents[1] / "rules"
RUNBOOKS = Path(__file__).resolve().parents[1] / "docs" / "runbooks.md"


def alerts() -> list[dict[str, object]]:
    found = []
    for f in sorted(RULES.glob("*.rules.yml")):
        for group in yaml.safe_load(f.read_text())["groups"]:
            found += [r for r in group["rules"] if "alert" in r]
    return found


def test_promtool_check_rules() -> None:
    files = sorted(str(p) for p in RULES.glob("*.rules.yml"))
    assert files
    res = subprocess.run(["promtool", "check", "rules", *files], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_unit_tests_cover_every_alert() -> None:
    tests = sorted(str(p.name) for p in (RULES / "tests").glob("*.yml"))
    res = subprocess.run(["promtool", "test", "rules", *tests], cwd=RULES / "tests", capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    tested = set()
    for t in (RULES / "tests").glob("*.yml"):
        for case in yaml.safe_load(t.read_text()).get("tests", []):
            for a in case.get("alert_rule_test", []):
                if a.get("exp_alerts"):
                    tested.add(a["alertname"])
    missing = {str(a["alert"]) for a in alerts()} - tested
    assert not missing, f"alerts never shown firing in a promtool test: {sorted(missing)}"


def test_every_alert_is_annotated_and_has_a_runbook_entry() -> None:
    anchors = {re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-"))
               for h in re.findall(r"^#+ (.+)$", RUNBOOKS.read_text(), flags=re.M)}
    for a in alerts():
        ann = a.get("annotations") or {}
        assert isinstance(ann, dict)
        assert {"summary", "description", "runbook_url"} <= set(ann), a["alert"]
        assert (a.get("labels") or {}).get("severity") in {"critical", "warning", "info"}, a["alert"]  # type: ignore[union-attr]
        anchor = str(ann["runbook_url"]).rsplit("#", 1)[-1]
        assert anchor in anchors, f"{a['alert']}: runbook anchor #{anchor} has no heading in docs/runbooks.md"
