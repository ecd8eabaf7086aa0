"""The remediator's config section and its playbooks: YAML → validated, frozen objects.

Both the config file and every playbook file go through the exporter's loader, so each problem
is reported as `file:line: key.path: message`. Cross-file rules (a step names a system that
exists and has the right connection; playbook names are unique) are checked here, after each
file is valid on its own, and reported with the playbook file's line and key as well.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, create_model, field_validator, model_validator

from remediator.labels import label_problems, templates
from remediator.steps import STEP_TYPES
from remediator.steps.base import Need, StepSpec, reads_targets
from remediator.steps.sql import Param, reject_templated_sql
from remediator.templating import Template
from taskmedic.config.loader import ConfigError, Document, KeyPath, expand_env, format_path, load, parse_yaml, validate
from taskmedic.config.model import Backup, Disk, Duration, HttpLimits, Model, Name, PostgresDsn, System
from taskmedic.detection import TARGET_KINDS


class BasicAuth(Model):
    username: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: str | None = None

    @model_validator(mode="after")
    def _one(self) -> BasicAuth:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("set exactly one of password or password_file")
        if self.password is not None and not self.password.get_secret_value().strip():
            # An empty password would let anyone who knows the username in.
            raise ValueError("the basic_auth password cannot be empty (is its environment variable set to ''?)")
        return self


NO_AUTH_HINT = ("set bearer_token, bearer_token_file or basic_auth; or write `auth: none` to accept alerts "
                "from anyone who can reach the port (not recommended)")


def _auth_or_none(value: Any) -> Any:
    """`auth: none` (explicitly) is the only way to run without credentials; no `auth` at all is an error."""
    if value is None:
        return {}  # refused below, with the hint
    if isinstance(value, str):
        if value.strip().lower() != "none":
            raise ValueError("expected a mapping of credentials or the word `none`")
        return {"unauthenticated": True}
    return value


class AuthSettings(Model):
    """Who may post alerts (and read /runs). Several tokens may be valid at once, for rotation."""

    unauthenticated: bool = False  # `auth: none`: anyone may post alerts and read /runs
    bearer_token: SecretStr | None = None
    bearer_tokens: list[SecretStr] = Field(default_factory=list)
    bearer_token_file: str | None = None  # one token per line
    basic_auth: BasicAuth | None = None
    protect_runs: bool = True  # /runs and /runs/{id} need the same credentials

    @field_validator("bearer_token", "bearer_tokens")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        tokens = value if isinstance(value, list) else [value]
        if any(t is not None and not t.get_secret_value().strip() for t in tokens):
            raise ValueError("a bearer token cannot be empty (is its environment variable set to ''?)")
        return value

    @model_validator(mode="after")
    def _credentials_or_none(self) -> AuthSettings:
        has_credentials = bool(self.bearer_token or self.bearer_tokens or self.bearer_token_file or self.basic_auth)
        if self.unauthenticated and has_credentials:
            raise ValueError("`auth: none` cannot be combined with credentials; drop one")
        if not self.unauthenticated and not has_credentials:
            raise ValueError(f"credentials are required: {NO_AUTH_HINT}")
        return self


class RemediatorSettings(Model):
    journal: PostgresDsn
    playbooks: str | list[str] = Field(min_length=1)
    auth: Annotated[AuthSettings, BeforeValidator(_auth_or_none)] = Field(default=None, validate_default=True)
    dry_run: bool = False
    listen: str = "0.0.0.0:9864"
    http: HttpLimits = HttpLimits()
    replica: str | None = None  # recorded on each run; default hostname:pid
    workers: int = Field(default=4, ge=1, le=64)  # runs executed at once by this replica
    lease: Duration = Field(default=30.0, ge=1)  # a run whose lease expired is marked interrupted
    poll_interval: Duration = Field(default=1.0, gt=0)
    statement_timeout: Duration = Field(default=60.0, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    shutdown_grace: Duration = 20.0  # on SIGTERM, running steps get this long to finish
    retention: Duration = Field(default=30 * 86400.0, ge=86400)  # finished runs older than this are deleted
    max_alerts_per_post: int = Field(default=100, ge=1)  # per playbook; the rest are answered as suppressed
    # a run that changed nothing (skipped, suppressed, refused) runs again when its alert is
    # delivered again, still firing, this long after it ended
    recheck_after: Duration = Field(default=60.0, ge=0)

    @property
    def replica_name(self) -> str:
        return self.replica or f"{socket.gethostname()}:{os.getpid()}"


class RemediatorConfig(Model):
    """What `taskmedic-remediator` reads; the exporter's sections are ignored."""

    systems: dict[Name, System] = Field(default_factory=dict)
    remediator: RemediatorSettings
    disks: list[Disk] = Field(default_factory=list)  # `targets: disk` selects among these
    backups: dict[Name, Backup] = Field(default_factory=dict)  # `targets: backup` selects among these
    exporter: Any = None


class SqlCheck(Model):
    system: Name
    query: str  # its first column of the first row is the number (no rows: 0)
    params: list[Param] = Field(default_factory=list)
    expect: float = 0  # the healthy value

    @field_validator("query")
    @classmethod
    def _plain_sql(cls, query: str) -> str:
        reject_templated_sql(query)
        return query


class RedisCheck(Model):
    system: Name
    count: Literal["llen", "hlen", "zcard", "scard", "xlen", "exists"]
    key: Template
    expect: float = 0


class Check(Model):
    """A number that says whether the problem is there: healthy when it equals `expect`.

    As `precheck`, a healthy value skips the run (nothing to do); as `verify`, checked `delay`
    after the steps, an unhealthy value fails the run (the repair did not hold)."""

    sql: SqlCheck | None = None
    redis: RedisCheck | None = None
    delay: Duration = Field(default=0.0, le=600)

    @model_validator(mode="after")
    def _one(self) -> Check:
        if (self.sql is None) == (self.redis is None):
            raise ValueError("set exactly one of sql or redis")
        return self

    @property
    def expect(self) -> float:
        return self.sql.expect if self.sql is not None else self.redis.expect if self.redis is not None else 0


TARGETS = "targets"  # `for_each: targets`, `verify: targets`, and the template variable


class StepBase(Model):
    """What every step has; its type's section (`sql:`, `redis:`, ...) is one field per registered
    step type, added from the registry below, so a new step type needs no edit here."""

    name: str = Field(min_length=1)
    for_each: str | None = None  # an earlier step's output rows (or `targets`): once per row, as `item`

    @model_validator(mode="after")
    def _one(self) -> StepBase:
        kinds = [k for k in STEP_TYPES if getattr(self, k, None) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a step has exactly one of {', '.join(STEP_TYPES)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in STEP_TYPES if getattr(self, k, None) is not None)

    @property
    def spec(self) -> StepSpec:
        spec: StepSpec = getattr(self, self.kind)
        return spec


if TYPE_CHECKING:
    Step = StepBase
else:
    Step = create_model("Step", __base__=StepBase,
                        **{key: (step.spec | None, None) for key, step in STEP_TYPES.items()})


class Playbook(Model):
    name: Name
    description: str = ""
    match: dict[str, str | None] = Field(min_length=1)  # exact, "~regex" (anchored), null/"" = absent
    on: Literal["firing", "resolved", "any"] = "firing"
    dry_run: bool = False
    cooldown: Duration = 0.0  # per alert fingerprint
    max_runs_per_hour: int | None = Field(default=None, gt=0)
    exclusive: bool = True  # one run of this playbook at a time across all replicas
    retry_interrupted: bool = False  # safe to run again after a replica died mid-run
    max_attempts: int = Field(default=3, ge=1)
    timeout: Duration = Field(default=300.0, gt=0)
    targets: str | None = None  # a kind in taskmedic.detection.TARGET_KINDS: what the steps act on
    precheck: Check | None = None
    steps: list[Step] = Field(min_length=1)
    verify: Check | Literal["targets"] | None = None
    label_text: list[str] = Field(default_factory=list)  # key paths where a label is free text, by name

    @field_validator("targets")
    @classmethod
    def _known_kind(cls, kind: str | None) -> str | None:
        if kind is not None and kind not in TARGET_KINDS:
            raise ValueError(f"unknown targets {kind!r}; one of {', '.join(TARGET_KINDS)}")
        return kind

    @field_validator("match")
    @classmethod
    def _regexes(cls, match: dict[str, str | None]) -> dict[str, str | None]:
        for label, value in match.items():
            if value is not None and value.startswith("~"):
                try:
                    re.compile(value[1:])
                except re.error as e:
                    raise ValueError(f"{label}: not a valid regular expression: {e}") from None
        return match

    @model_validator(mode="after")
    def _targets(self) -> Playbook:
        if self.targets is None:
            for step in self.steps:
                if any(reads_targets(text) for _, text in templates(step.spec, ())):
                    raise ValueError(f"step {step.name!r} reads `targets` but the playbook sets no `targets:`")
        if self.verify == TARGETS:
            if self.targets is None:
                raise ValueError("verify: targets needs `targets:` (the rule re-run after the steps)")
            if not TARGET_KINDS[self.targets].verifiable:
                raise ValueError(f"verify: targets is not meaningful for targets: {self.targets}")
        return self

    @model_validator(mode="after")
    def _steps(self) -> Playbook:
        seen: dict[str, Step] = {}
        for step in self.steps:
            if step.name in seen or step.name == TARGETS:
                raise ValueError(f"two steps are named {step.name!r}" if step.name in seen else
                                 f"a step cannot be named {TARGETS!r}: that name is the playbook's targets")
            if step.for_each == TARGETS and self.targets is None:
                raise ValueError(f"step {step.name!r}: for_each: targets needs `targets:` on the playbook")
            if step.for_each is not None and step.for_each != TARGETS and step.for_each not in seen:
                raise ValueError(f"step {step.name!r}: for_each must name an earlier step (or targets)")
            for key, source in step.spec.reads_rows_of().items():
                if source not in seen:
                    raise ValueError(f"step {step.name!r}: {key} must name an earlier step")
            problem = step.spec.sources_problem(step.for_each, {n: s.spec for n, s in seen.items()})
            if problem is not None:
                raise ValueError(f"step {step.name!r}: {problem}")
            seen[step.name] = step
        return self


@dataclass(frozen=True)
class Setup:
    """Everything the remediator runs with, loaded and cross-checked once."""

    config: RemediatorConfig
    playbooks: tuple[Playbook, ...]
    tokens: tuple[str, ...]
    basic: tuple[str, str] | None
    path: str

    @property
    def settings(self) -> RemediatorSettings:
        return self.config.remediator

    def playbook(self, name: str) -> Playbook | None:
        return next((p for p in self.playbooks if p.name == name), None)


def playbook_files(settings: RemediatorSettings, base: Path) -> list[Path]:
    entries = [settings.playbooks] if isinstance(settings.playbooks, str) else settings.playbooks
    files: list[Path] = []
    for entry in entries:
        path = base / entry
        files.extend(sorted([*path.glob("*.yml"), *path.glob("*.yaml")]) if path.is_dir() else [path])
    return files


def _read_playbook(path: Path) -> tuple[Playbook, Document]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{path}: cannot read playbook: {e.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    doc = parse_yaml(text, str(path))
    if not isinstance(doc.data, dict):
        raise ConfigError([f"{path}: expected a playbook (a mapping) at the top level"])
    expand_env(doc)
    return validate(Playbook, doc), doc


def _system_refs(playbook: Playbook) -> list[tuple[KeyPath, str, Need]]:
    refs: list[tuple[KeyPath, str, Need]] = []
    for name, check in (("precheck", playbook.precheck), ("verify", playbook.verify)):
        if not isinstance(check, Check):
            continue
        if check.sql is not None:
            refs.append(((name, "sql", "system"), check.sql.system, "database"))
        if check.redis is not None:
            refs.append(((name, "redis", "system"), check.redis.system, "redis"))
    for i, step in enumerate(playbook.steps):
        refs += [(("steps", i, step.kind, "system"), system, need) for system, need in step.spec.systems()]
    return refs


def _check_systems(playbook: Playbook, doc: Document, systems: dict[str, System]) -> list[str]:
    problems = []
    for path, name, need in _system_refs(playbook):
        where = f"{doc.where(path)}: {format_path(path)}"
        system = systems.get(name)
        if system is None:
            hint = difflib.get_close_matches(name, list(systems), n=1)
            problems.append(f"{where}: unknown system {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else
                            f"; configured systems: {', '.join(systems) or 'none'}"))
        elif getattr(system, need) is None:
            problems.append(f"{where}: system {name!r} has no `{need}` configured")
    return problems


def load_playbooks(config: RemediatorConfig, base: Path) -> tuple[Playbook, ...]:
    files = playbook_files(config.remediator, base)
    if not files:
        raise ConfigError([f"{base}: remediator.playbooks: no playbook files (*.yml) found"])
    problems: list[str] = []
    loaded: dict[str, tuple[Playbook, Document]] = {}
    for path in files:
        try:
            playbook, doc = _read_playbook(path)
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        problems.extend(_check_systems(playbook, doc, config.systems))
        problems.extend(label_problems(playbook, doc))
        if playbook.name in loaded:
            problems.append(f"{doc.where(('name',))}: name: playbook {playbook.name!r} is also defined in "
                            f"{loaded[playbook.name][1].file}")
        loaded[playbook.name] = (playbook, doc)
    if problems:
        raise ConfigError(problems)
    return tuple(p for p, _ in loaded.values())


def _read_secret_lines(file: str, base: Path, what: str) -> list[str]:
    try:
        lines = (base / file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{base / file}: cannot read {what}: {getattr(e, 'strerror', None) or e}"]) from None
    values = [line.strip() for line in lines if line.strip()]
    if not values:
        raise ConfigError([f"{base / file}: {what} file is empty"])
    return values


def _credentials(auth: AuthSettings, base: Path) -> tuple[tuple[str, ...], tuple[str, str] | None]:
    tokens = [t.get_secret_value().strip() for t in [auth.bearer_token, *auth.bearer_tokens] if t is not None]
    if auth.bearer_token_file:
        tokens += _read_secret_lines(auth.bearer_token_file, base, "bearer token")
    basic = None
    if auth.basic_auth is not None:
        password = (auth.basic_auth.password.get_secret_value() if auth.basic_auth.password is not None
                    else _read_secret_lines(auth.basic_auth.password_file or "", base, "password")[0])
        basic = (auth.basic_auth.username, password)
    return tuple(tokens), basic


def load_setup(path: str) -> Setup:
    """Load the config file, every playbook and every secret file; ConfigError lists all problems."""
    config = load(RemediatorConfig, path)
    base = Path(path).resolve().parent
    playbooks = load_playbooks(config, base)
    tokens, basic = _credentials(config.remediator.auth, base)
    return Setup(config=config, playbooks=playbooks, tokens=tokens, basic=basic, path=path)
