"""The adversary's tests: the remediator's `site` fixture, shared."""

from tests.remediator.conftest import site, start  # noqa: F401  (fixtures)
