"""YAML → validated, frozen config objects, with errors that name the file, line and key.

Both processes read one file format. The document is composed node by node so every key keeps
its line number; `${ENV}` references are expanded before validation; a system's built-in
profile is merged under the user's keys (key by key); pydantic then validates the result and
every error is mapped back to `file:line: key.path: message`.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

KeyPath = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

# values under these keys are never echoed back in an error (they hold DSNs or credentials)
_SECRET_KEY = re.compile(r"(?i)database|redis|journal|dsn|url|password|token|secret|credential")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
PROFILE_DIR = Path(__file__).parent / "profiles"


class ConfigError(Exception):
    """One or more problems in a config file; `str()` lists each as `file:line: key: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Document:
    """Plain data parsed from one YAML file plus where each key came from."""

    data: Any
    file: str
    lines: dict[KeyPath, tuple[str, int]] = field(default_factory=dict)

    def where(self, path: KeyPath) -> str:
        """`file:line` of the deepest known ancestor of `path`."""
        for n in range(len(path), -1, -1):
            hit = self.lines.get(path[:n])
            if hit:
                return f"{hit[0]}:{hit[1]}"
        return self.file


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _compose(text: str, file: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError([f"{file}{line}: invalid YAML: {e.problem or e}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{file}: invalid YAML: {e}"]) from None


def _to_data(node: yaml.Node, path: KeyPath, file: str, lines: dict[KeyPath, tuple[str, int]]) -> Any:
    lines.setdefault(path, (file, node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            # A key is a name as written: YAML 1.1 would read a plain `on:` (playbooks) as True.
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise ConfigError([f"{file}:{key_node.start_mark.line + 1}: {format_path(path)}: "
                                   f"keys must be strings, got {key!r}"])
            if key in out:
                raise ConfigError([f"{file}:{key_node.start_mark.line + 1}: "
                                   f"{format_path((*path, key))}: duplicate key"])
            lines[(*path, key)] = (file, key_node.start_mark.line + 1)
            out[key] = _to_data(value_node, (*path, key), file, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_data(item, (*path, i), file, lines) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def parse_yaml(text: str, file: str) -> Document:
    node = _compose(text, file)
    lines: dict[KeyPath, tuple[str, int]] = {}
    data = {} if node is None else _to_data(node, (), file, lines)
    return Document(data=data, file=file, lines=lines)


def read_yaml(path: str | os.PathLike[str]) -> Document:
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{file}: cannot read: {e.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{file}: not UTF-8 text"]) from None
    return parse_yaml(text, file)


def expand_env(doc: Document, environ: typing.Mapping[str, str] | None = None) -> None:
    """Replace `${VAR}` / `${VAR:-default}` in every string, in place; unset variables are errors."""
    env = os.environ if environ is None else environ
    problems: list[str] = []

    def walk(value: Any, path: KeyPath) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str):
            def sub(m: re.Match[str]) -> str:
                name, default = m.group(1), m.group(2)
                if name in env:
                    return env[name]
                if default is not None:
                    return default
                problems.append(f"{doc.where(path)}: {format_path(path)}: environment variable "
                                f"{name} is not set")
                return ""
            return _ENV_REF.sub(sub, value)
        return value

    doc.data = walk(doc.data, ())
    if problems:
        raise ConfigError(problems)


def deep_merge(base: Any, override: Any) -> Any:
    """`override` wins key by key; lists and scalars are replaced whole."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = deep_merge(base[k], v) if k in base else v
        return out
    return override


def apply_profiles(doc: Document) -> None:
    """Merge each system's built-in profile under its own keys."""
    systems = doc.data.get("systems") if isinstance(doc.data, dict) else None
    if not isinstance(systems, dict):
        return
    known = sorted(p.stem for p in PROFILE_DIR.glob("*.yml"))
    for name, system in systems.items():
        if not isinstance(system, dict) or "profile" not in system:
            continue
        profile = system["profile"]
        path = ("systems", name, "profile")
        if profile not in known:
            hint = difflib.get_close_matches(str(profile), known, n=1)
            raise ConfigError([f"{doc.where(path)}: {format_path(path)}: unknown profile {profile!r}; "
                               f"expected one of {', '.join(known)}"
                               + (f" (did you mean {hint[0]!r}?)" if hint else "")])
        prof = read_yaml(PROFILE_DIR / f"{profile}.yml")
        for key_path, where in prof.lines.items():
            doc.lines.setdefault(("systems", name, *key_path), where)
        systems[name] = deep_merge(prof.data, system)


def _unwrap(tp: Any) -> Any:
    """Strip Optional/Annotated so the model class behind a field can be found."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            tp = models[0] if models else args[0]
        else:
            return tp


def _keys_at(model: type[BaseModel], path: KeyPath) -> list[str]:
    """Valid field names of the model that sits at `path` (for 'did you mean' hints)."""
    tp: Any = model
    for part in path:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            info = tp.model_fields.get(str(part))
            if info is None:
                return []
            tp = info.annotation
        elif typing.get_origin(tp) in (dict, list):
            tp = typing.get_args(tp)[-1]
        else:
            return []
    tp = _unwrap(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _describe(err: Any, model: type[BaseModel], path: KeyPath) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        valid = _keys_at(model, path[:-1])
        hint = difflib.get_close_matches(str(path[-1]), valid, n=1)
        msg = "unknown key"
        if hint:
            msg += f"; did you mean {hint[0]!r}?"
        elif valid:
            msg += f"; expected one of {', '.join(valid)}"
        return msg
    if kind == "missing":
        return "required key is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    # A value under a secret-looking key is never echoed; nor is anything under basic_auth_users,
    # whose keys are user names and whose values may be a password pasted in place of its hash.
    secret = bool(path) and (_SECRET_KEY.search(str(path[-1])) is not None or "basic_auth_users" in path)
    if "input" in err and not secret and kind not in ("model_type", "dict_type") and not isinstance(
            err["input"], dict):
        shown = err["input"]
        if isinstance(shown, str) and len(shown) > 60:
            shown = shown[:57] + "..."
        msg += f" (got {shown!r})"
    return msg


def _error_path(loc: tuple[Any, ...]) -> KeyPath:
    # pydantic puts union/tag/validator names into loc; keep only real keys and indexes.
    return tuple(p for p in loc if isinstance(p, int) or (isinstance(p, str) and not p.startswith(
        ("function-", "tagged-union", "union["))))


def validate(model: type[M], doc: Document) -> M:
    try:
        return model.model_validate(doc.data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            path = _error_path(err["loc"])
            problems.append(f"{doc.where(path)}: {format_path(path)}: {_describe(err, model, path)}")
        raise ConfigError(problems) from None


def load(model: type[M], path: str | os.PathLike[str],
         environ: typing.Mapping[str, str] | None = None) -> M:
    """Read, expand `${ENV}`, apply profiles and validate one config file."""
    doc = read_yaml(path)
    if not isinstance(doc.data, dict):
        raise ConfigError([f"{doc.file}: expected a mapping at the top level"])
    # Sections the other process owns are typed `Any` here: drop them before expanding `${ENV}`,
    # so the exporter does not need the remediator's secrets, nor the other way round.
    for section, info in model.model_fields.items():
        if info.annotation is Any:
            doc.data.pop(section, None)
    expand_env(doc, environ)
    apply_profiles(doc)
    return validate(model, doc)
