"""The distribution's metadata: a license file that matches, classifiers and project URLs, and every
third-party module the code imports declared as a dependency."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"taskmedic", "exporter", "remediator"}


def project() -> dict[str, object]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    result: dict[str, object] = data["project"]
    return result


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level_modules() -> dict[str, str]:
    """Top-level module -> a file importing it, over the installed packages' code."""
    found: dict[str, str] = {}
    for package in FIRST_PARTY:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_license_file_matches_the_declared_license() -> None:
    meta = project()
    assert meta["license"] == "Apache-2.0"
    assert meta["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_classifiers_and_project_urls() -> None:
    meta = project()
    classifiers = meta["classifiers"]
    assert isinstance(classifiers, list)
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert any(c.startswith("Topic :: System :: Monitoring") for c in classifiers)
    # PEP 639: with a license expression, no License :: classifier.
    assert not any(c.startswith("License ::") for c in classifiers)
    urls = meta["urls"]
    assert isinstance(urls, dict) and {"Homepage", "Source", "Issues"} <= set(urls)
    assert all(str(u).startswith("https://") for u in urls.values())


def test_every_imported_third_party_module_is_a_declared_dependency() -> None:
    """`yarl` was imported but only arrived through aiohttp: a dependency must be declared where used
    (in `dependencies`, or in an optional extra other than `test` for a feature that says which
    extra to install when it is missing, as `taskmedic[celery]` does)."""
    dependencies = project()["dependencies"]
    extras = project()["optional-dependencies"]
    assert isinstance(dependencies, list) and isinstance(extras, dict)
    optional = [d for name, ds in extras.items() if name != "test" for d in ds]
    declared = {normalize(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in [*dependencies, *optional]}
    distributions = packages_distributions()
    missing = {}
    for module, where in imported_top_level_modules().items():
        if module in FIRST_PARTY or module in sys.stdlib_module_names or module == "__future__":
            continue
        owners = {normalize(d) for d in distributions.get(module, [])}
        assert owners, f"{where} imports {module}, which no installed distribution provides"
        if not owners & declared:
            missing[module] = where
    assert not missing, f"imported but not declared in pyproject dependencies: {missing}"
