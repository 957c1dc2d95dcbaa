"""Config from JSON, from CLI overrides (SECTION.FIELD=VALUE) and from a run directory."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

from topicdyn.config.checks import ConfigError, is_num
from topicdyn.config.sections import SECTIONS, Config

# config.json's key for the record of which implementation trained the run (run.py writes it)
RECORD_KEY = "implementation"


def _json(text: str, name: str):
    """JSON of an override value; a parse error is one ConfigError naming the field."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        msg = getattr(e, "msg", "too deeply nested")
        raise ConfigError(f"{name}: not valid JSON ({msg}), got {text!r}") from None


def _coerce(tp, value, name: str):
    """Convert a JSON value (or a CLI string) to the annotated field type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name)
    if origin is tuple:
        if isinstance(value, str):
            value = _json(value, name) if value.strip().startswith("[") else \
                [p.strip() for p in value.split(",") if p.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], x, name) for x in value)
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(a, x, name) for a, x in zip(args, value))
        raise ConfigError(f"{name}: must be a list of {len(args)} items, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ConfigError(f"{name}: must be true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, str):
        try:
            return tp(value)
        except ValueError:
            what = "an integer" if tp is int else "a number"
            raise ConfigError(f"{name}: must be {what}, got {value!r}") from None
    if tp is int:
        return int(value) if isinstance(value, float) and value.is_integer() else value
    if tp is float:
        return float(value) if is_num(value) else value
    if tp is str:
        return str(value) if not isinstance(value, str) else value
    return value


def build(cls, d: dict, prefix: str):
    """An instance of the config dataclass `cls` from a (nested) mapping; prefix names fields."""
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        full = f"{prefix}{key}"
        if key not in names:
            from topicdyn.config.describe import did_you_mean
            raise ConfigError(f"{full}: unknown field{did_you_mean(full)}; allowed: "
                              f"{', '.join(sorted(names))}")
        if cls is Config and key in SECTIONS:
            kwargs[key] = build(SECTIONS[key], value, f"{key}.")
        else:
            kwargs[key] = _coerce(hints[key], value, full)
    return cls(**kwargs)


def apply_overrides(cfg: Config, overrides: list[str] | dict) -> Config:
    """Return `cfg` with dotted overrides applied, e.g. ["data.T=5", "train.steps=100"]."""
    d = cfg.to_dict()
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    for key, value in items:
        parts = key.split(".")
        if len(parts) == 1 and parts[0] == "preset":
            d["preset"] = value
            continue
        from topicdyn.config.describe import did_you_mean
        if len(parts) != 2 or parts[0] not in SECTIONS:
            raise ConfigError(f"{key}: overrides are SECTION.FIELD=VALUE with SECTION one of "
                              f"{', '.join(SECTIONS)}{did_you_mean(key)}")
        section, name = parts
        if name not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
            allowed = ", ".join(f.name for f in dataclasses.fields(SECTIONS[section]))
            raise ConfigError(f"{key}: unknown field{did_you_mean(key)}; allowed in {section}: "
                              f"{allowed} (topicdyn config lists every field)")
        if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
            value = _json(value.strip(), key)
        d[section][name] = value
    return Config.from_dict(d)


def _split(o: str) -> tuple[str, str]:
    if "=" not in o:
        from topicdyn.config.describe import suggest
        hint = " or ".join(f"{n}=VALUE" for n in suggest(o.strip()))
        raise ConfigError(f"{o}: overrides must look like SECTION.FIELD=VALUE"
                          + (f" (write {hint})" if hint else ""))
    k, v = o.split("=", 1)
    return k.strip(), v.strip()


def load_config(path: str | Path) -> Config:
    """Read a `config.json` written by a run (or by hand)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config: file not found: {p}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config: {p} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if isinstance(d, dict):
        d.pop(RECORD_KEY, None)  # what trained the run: a record, not a setting
    return Config.from_dict(d)


def require_run(run_dir: str | Path, field: str = "run_dir") -> Config:
    """The config of the run in run_dir; a ConfigError naming `field` if it is not a run
    directory."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise ConfigError(f"{field}: {run_dir} is not a run directory (no config.json)")
    return load_config(run_dir)
