"""Which alerts a playbook takes, and what its templates may do with their values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from remediator.alert import AlertInfo
from remediator.config import Playbook
from remediator.matching import matches
from remediator.templating import RenderError, UnsafeValue, glob_literal, render, url_segment
from tests.remediator.kit import Site


def playbook(match: dict[str, str | None], on: str = "firing") -> Playbook:
    return Playbook.model_validate({"name": "p", "match": match, "on": on,
                                    "steps": [{"name": "s", "command": {"argv": ["true"]}}]})


def info(status: str = "firing", **labels: str) -> AlertInfo:
    return AlertInfo(fingerprint="f", status=status, starts_at=datetime(2026, 11, 22, tzinfo=UTC), labels=labels)


def test_exact_regex_and_absent_matchers() -> None:
    book = playbook({"alertname": "TaskmedicStuckTasks", "system": "~cape|harbor", "severity": None, "team": ""})
    assert matches(book, info(alertname="TaskmedicStuckTasks", system="harbor"))
    assert matches(book, info(alertname="TaskmedicStuckTasks", system="cape", team=""))
    assert not matches(book, info(alertname="TaskmedicStuckTasks", system="capex"))  # regex is anchored
    assert not matches(book, info(alertname="TaskmedicStuckTasks", system="xcape"))
    assert not matches(book, info(alertname="TaskmedicStuckTasks", system="cape", severity="critical"))
    assert not matches(book, info(alertname="TaskmedicStuckTask", system="cape"))
    assert not matches(book, info(alertname="TaskmedicStuckTasks"))


def test_a_repair_never_runs_on_a_resolved_alert_unless_asked() -> None:
    assert not matches(playbook({"alertname": "A"}), info("resolved", alertname="A"))
    assert matches(playbook({"alertname": "A"}, on="resolved"), info("resolved", alertname="A"))
    assert not matches(playbook({"alertname": "A"}, on="resolved"), info("firing", alertname="A"))
    assert matches(playbook({"alertname": "A"}, on="any"), info("resolved", alertname="A"))


def test_on_is_read_as_written_in_a_playbook_file(site: Site) -> None:
    book = "name: p\nmatch: {alertname: A}\non: resolved\nsteps: [{name: s, command: {argv: ['true']}}]\n"
    assert site.setup(book).playbooks[0].on == "resolved"


def test_templates_see_labels_annotations_and_the_alert() -> None:
    variables = info(alertname="A", older_than="2 hours").variables()
    assert render("{{ labels.older_than }}|{{ alert.fingerprint }}|{{ alert.status }}", variables) == \
        "2 hours|f|firing"
    assert render("{{ labels.missing | default('1 hour') }}", variables) == "1 hour"
    with pytest.raises(RenderError, match="has no attribute 'missing'"):
        render("{{ labels.missing }}", variables)


def test_the_sandbox_refuses_to_reach_python_internals() -> None:
    with pytest.raises(RenderError, match="unsafe"):
        render("{{ labels.__class__.__mro__[1].__subclasses__() }}", {"labels": {}})
    with pytest.raises(RenderError):
        render("{{ range(10**9) | list }}", {})


def test_a_label_value_is_data_never_a_template() -> None:
    assert render("{{ labels.x }}", {"labels": {"x": "{{ 7 * 7 }}"}}) == "{{ 7 * 7 }}"


def test_escaping_for_urls_and_redis_globs() -> None:
    assert url_segment("a b?c#d&e=f") == "a%20b%3Fc%23d%26e%3Df"
    for unsafe in ("../a", "..", ".", "", "a\\b", "%2e%2e", "1\r\n", "x\x00", "\x85"):
        with pytest.raises(UnsafeValue):
            url_segment(unsafe)
    assert glob_literal("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"
