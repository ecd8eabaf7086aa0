"""The PrometheusRule manifest is generated from rules/ and fails while out of date."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy.helpers import (
    K8S,
    RULES,
    load_generator,
    rule_files,
)


def test_prometheusrule_is_generated_from_rules() -> None:
    generator = load_generator()
    committed = (K8S / "base" / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert committed == generator.render(RULES), (
        "deploy/kubernetes/base/prometheusrule.yaml is out of date: run make mixin")
    # Independently of the generator: the same groups and rules, in the same order, as rules/.
    expected = [g for f in rule_files()
                for g in (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("groups", [])]
    groups = yaml.safe_load(committed)["spec"]["groups"]
    assert [g["name"] for g in groups] == [g["name"] for g in expected]
    for got, want in zip(groups, expected, strict=True):
        assert [(r.get("alert"), r.get("record"), r["expr"]) for r in got["rules"]] == [
            (r.get("alert"), r.get("record"), r["expr"]) for r in want.get("rules") or []]
        for g_rule, w_rule in zip(got["rules"], want.get("rules") or [], strict=True):
            assert g_rule.get("for") == (str(w_rule["for"]) if "for" in w_rule else None)
            assert g_rule.get("annotations", {}) == {k: str(v) for k, v in (w_rule.get("annotations") or {}).items()}


def test_generator_check_mode_and_errors(tmp_path: Path) -> None:
    generator = load_generator()
    rules = tmp_path / "rules"
    rules.mkdir()
    output = tmp_path / "prometheusrule.yaml"
    assert generator.main(["--rules", str(rules), "--output", str(output)]) == 0
    assert yaml.safe_load(output.read_text(encoding="utf-8"))["spec"]["groups"] == []
    assert generator.main(["--check", "--rules", str(rules), "--output", str(output)]) == 0
    (rules / "a.rules.yml").write_text(
        "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: |\n      up == 0\n    for: 5m\n"
        "    labels: {severity: warning, tier: 1}\n", encoding="utf-8")
    assert generator.main(["--check", "--rules", str(rules), "--output", str(output)]) == 1, "stale file undetected"
    assert generator.main(["--rules", str(rules), "--output", str(output)]) == 0
    (rule,) = yaml.safe_load(output.read_text(encoding="utf-8"))["spec"]["groups"][0]["rules"]
    assert rule == {"alert": "A", "expr": "up == 0\n", "for": "5m", "labels": {"severity": "warning", "tier": "1"}}
    (rules / "b.rules.yml").write_text("groups:\n- name: g\n  rules: []\n", encoding="utf-8")
    with pytest.raises(generator.RulesError, match="already used"):
        generator.render(rules)
    (rules / "b.rules.yml").write_text("groups:\n- name: h\n  rules:\n  - {alert: B, record: b, expr: '1'}\n",
                                       encoding="utf-8")
    with pytest.raises(generator.RulesError, match="exactly one"):
        generator.render(rules)
