"""Sweep specs: a base config, a grid (or list of points) over config fields, and a seed count.

A spec is a JSON (or YAML) file, or a Python file defining a dict `SPEC`:

    {"name": "lag", "preset": "F", "base": ["train.steps=2000"],
     "grid": {"model.init_scale": [0.002, 0.02], "optim.lr": [0.003, 0.01]},
     "seeds": 5, "out": "runs/sweeps/lag",
     "plots": [{"metric": "t50/lag", "x": "model.init_scale", "y": "optim.lr"}]}

Grid axes are config fields (`SECTION.FIELD`), `preset`, or several fields tied together
(`"data.N_min,data.N_max": [[8, 12], [50, 60]]`). `points` (a list of {axis: value}) replaces
`grid` for irregular sweeps. Every point's Config is built (and so validated) when the spec is
loaded, before anything trains: a bad spec raises ConfigError naming the point and the field.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from topicdyn.config import (PRESETS, Config, ConfigError, MaskConfig, apply_overrides, load_config,
                             preset)

# fields that change neither array shapes nor the compiled program: points that differ only
# in these train together on the vmapped ensemble axis (training.init_state / make_chunk_fn)
MASK_PROBS = ("p_mask", "p_replace_mask", "p_replace_random", "p_keep")
VMAPPED = ("optim.lr", "model.init_scale", "train.seed") + tuple(f"mask.{f}" for f in MASK_PROBS)

_KEYS = {"name", "preset", "config", "base", "grid", "points", "seeds", "out", "probes",
         "theory", "plots", "max_members", "description"}


@dataclass(frozen=True)
class Point:
    """One grid point: its run directory name, swept values (axis -> value) and full Config."""

    name: str
    values: dict
    cfg: Config


@dataclass(frozen=True)
class Spec:
    name: str
    out: Path
    seeds: int
    axes: tuple[str, ...]
    points: tuple[Point, ...]
    probes: bool = True  # probe every checkpoint, theory.json and verdicts per point
    theory: bool = True  # compute the theory predictions (needs probes)
    plots: tuple[dict, ...] = ()
    max_members: int | None = None  # most ensemble members in one compiled program
    raw: dict = field(default_factory=dict, compare=False)

    def point_dir(self, p: Point) -> Path:
        return self.out / "points" / p.name


def load_spec(path: str | Path, out: str | Path | None = None) -> Spec:
    """Read and validate a spec file (.json, .yaml/.yml, or .py defining SPEC)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"spec: file not found: {p}")
    if p.suffix == ".py":
        try:
            raw = runpy.run_path(str(p)).get("SPEC")
        except Exception as e:  # noqa: BLE001 - a broken spec file is a user error
            raise ConfigError(f"spec: {p} failed to run ({type(e).__name__}: {e})") from None
        if raw is None:
            raise ConfigError(f"spec: {p} defines no SPEC dict")
    elif p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError("spec: YAML specs need PyYAML (pip install pyyaml); "
                              "or write the spec as JSON") from None
        try:
            raw = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            line = f", line {where.line + 1}" if where is not None else ""
            raise ConfigError(f"spec: {p} is not valid YAML ({getattr(e, 'problem', None) or e}"
                              f"{line})") from None
    else:
        try:
            raw = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"spec: {p} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if isinstance(raw, dict):
        raw = {"name": p.stem, **raw}
        c = raw.get("config")
        if isinstance(c, str) and not Path(c).is_absolute() and (p.parent / c).exists():
            raw["config"] = str(p.parent / c)  # a config next to the spec
    return parse_spec(raw, out=out)


def parse_spec(raw: Any, out: str | Path | None = None) -> Spec:
    """Validate a spec dict and build every point's Config (see module doc)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"spec: must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"spec: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_KEYS))}")
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ConfigError(f"spec.name: must be letters, digits, '.', '_' or '-', got {name!r}")
    seeds = raw.get("seeds", 1)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"spec.seeds: must be an integer >= 1, got {seeds!r}")
    mm = raw.get("max_members")
    if mm is not None and (not isinstance(mm, int) or isinstance(mm, bool) or mm < 1):
        raise ConfigError(f"spec.max_members: must be an integer >= 1 or null, got {mm!r}")
    for key in ("probes", "theory"):
        if not isinstance(raw.get(key, True), bool):
            raise ConfigError(f"spec.{key}: must be true or false, got {raw[key]!r}")

    base_cfg, base_preset = _base(raw)
    base = _overrides(raw.get("base", []), "spec.base")
    for k in base:
        if k == "train.n_seeds":
            raise ConfigError("spec.base: train.n_seeds is set by spec.seeds")
    axes, assignments = _assignments(raw)
    points, seen = [], {}
    for values in assignments:
        cfg = _point_config(base_cfg, base_preset, base, values, seeds)
        key = cfg.to_json()
        if key in seen:
            raise ConfigError(f"spec: points {_label(seen[key])} and {_label(values)} give the "
                              "same config")
        seen[key] = values
        points.append(Point(_dir_name(values), values, cfg))
    names = [p.name for p in points]
    if len(set(names)) != len(names):  # sanitising collided: make the names unique
        points = [dataclasses.replace(p, name=f"{p.name}-{_hash(p.values)}") for p in points]
    plots = _plots(raw.get("plots", []), axes)
    out_dir = Path(out) if out is not None else Path(raw.get("out") or f"runs/sweeps/{name}")
    return Spec(name, out_dir, seeds, axes, tuple(points), raw.get("probes", True),
                raw.get("theory", True), plots, mm, raw)


def _base(raw) -> tuple[Config | None, str]:
    if "config" in raw and "preset" in raw:
        raise ConfigError("spec: give either preset or config, not both")
    if "config" in raw:
        return load_config(raw["config"]), ""
    name = raw.get("preset", "F")
    if name not in PRESETS:
        raise ConfigError(f"spec.preset: must be one of {', '.join(PRESETS)}, got {name!r}")
    return None, name


def _overrides(x, where: str) -> dict:
    """Override strings ["a.b=1"] or a mapping {"a.b": 1} -> ordered dict."""
    if isinstance(x, dict):
        return dict(x)
    if not isinstance(x, list) or not all(isinstance(o, str) for o in x):
        raise ConfigError(f"{where}: must be a list of SECTION.FIELD=VALUE strings or a mapping")
    out = {}
    for o in x:
        if "=" not in o:
            raise ConfigError(f"{where}: {o!r} must look like SECTION.FIELD=VALUE")
        k, v = o.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _assignments(raw) -> tuple[tuple[str, ...], list[dict]]:
    """(axes, [{axis: value}]) from grid (cartesian product, first axis slowest) or points."""
    if "grid" in raw and "points" in raw:
        raise ConfigError("spec: give either grid or points, not both")
    if "points" in raw:
        pts = raw["points"]
        if not isinstance(pts, list) or not pts:
            raise ConfigError("spec.points: must be a non-empty list of {axis: value} mappings")
        axes: list[str] = []
        for p in pts:
            if not isinstance(p, dict):
                raise ConfigError(f"spec.points: every point must be a mapping, got {p!r}")
            axes += [a for a in p if a not in axes]
        for a in axes:
            _check_axis(a)
        return tuple(axes), [dict(p) for p in pts]
    grid = raw.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError("spec.grid: must be a non-empty mapping {axis: [values]} (or give "
                          "points)")
    for a, vals in grid.items():
        _check_axis(a)
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"spec.grid.{a}: must be a non-empty list of values, got {vals!r}")
    axes = tuple(grid)
    return axes, [dict(zip(axes, combo)) for combo in itertools.product(*grid.values())]


def _check_axis(a) -> None:
    if not isinstance(a, str) or not a:
        raise ConfigError(f"spec: axis names must be strings, got {a!r}")
    for f in a.split(","):
        f = f.strip()
        if f == "train.n_seeds":
            raise ConfigError("spec: train.n_seeds cannot be swept; spec.seeds sets it")
        if f != "preset" and f.count(".") != 1:
            raise ConfigError(f"spec: axis {a!r}: {f!r} is not SECTION.FIELD or preset")


def _expand(values: dict) -> dict:
    """{axis: value} -> {field: value}, splitting tied axes "a.b,c.d": [x, y]."""
    out = {}
    for a, v in values.items():
        fields = [f.strip() for f in a.split(",")]
        if len(fields) == 1:
            out[fields[0]] = v
            continue
        if not isinstance(v, (list, tuple)) or len(v) != len(fields):
            raise ConfigError(f"spec: axis {a!r} ties {len(fields)} fields; each value must be "
                              f"a list of {len(fields)}, got {v!r}")
        out.update(zip(fields, v))
    return out


def _point_config(base_cfg, base_preset, base: dict, values: dict, seeds: int) -> Config:
    fields = _expand(values)
    name = fields.pop("preset", base_preset)
    try:
        if base_cfg is not None:
            if "preset" in values:
                raise ConfigError("preset: cannot be swept when the spec starts from a config "
                                  "file")
            cfg = base_cfg
        else:
            cfg = preset(name)
        cfg = apply_overrides(cfg, {**base, **fields, "train.n_seeds": seeds})
    except ConfigError as e:
        raise ConfigError(f"spec point {_label(values)}: {e}") from None
    return cfg


def _label(values: dict) -> str:
    return "{" + ", ".join(f"{a}={_fmt(v)}" for a, v in values.items()) + "}"


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _dir_name(values: dict) -> str:
    """A stable directory name from the swept values, e.g. k=2_N_min=8_N_max=12 (no index, so
    extending a grid keeps the existing points' directories)."""
    parts = []
    for a, v in values.items():
        fields = [f.strip().split(".")[-1] for f in a.split(",")]
        vals = list(v) if len(fields) > 1 and isinstance(v, (list, tuple)) else [v]
        parts += [f"{f}={_fmt(x)}" for f, x in zip(fields, vals)]
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "-", "_".join(parts)) or "point"
    return name if len(name) <= 96 else f"{name[:80]}-{_hash(values)}"


def _hash(values: dict) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _plots(plots, axes) -> tuple[dict, ...]:
    if not isinstance(plots, list):
        raise ConfigError("spec.plots: must be a list of {metric, x, y?} mappings")
    out = []
    for p in plots:
        if not isinstance(p, dict) or not isinstance(p.get("metric"), str):
            raise ConfigError(f"spec.plots: each plot needs a metric name, got {p!r}")
        extra = set(p) - {"metric", "x", "y", "title", "log_x", "log_y", "log_color"}
        if extra:
            raise ConfigError(f"spec.plots: unknown key {sorted(extra)[0]!r} in {p!r}")
        for k in ("x", "y"):
            if p.get(k) is not None and p[k] not in axes:
                raise ConfigError(f"spec.plots: {k}={p[k]!r} is not a swept axis; axes: "
                                  f"{', '.join(axes)}")
        out.append(dict(p))
    return tuple(out)


# ---- grouping: one compiled program per group -------------------------------------------------
MASK_DEFAULTS = {f: getattr(MaskConfig(), f) for f in MASK_PROBS}


def program_key(cfg: Config) -> str:
    """Configs with equal keys share array shapes and the compiled program (VMAPPED differ)."""
    return dataclasses.replace(
        cfg, optim=dataclasses.replace(cfg.optim, lr=1.0),
        model=dataclasses.replace(cfg.model, init_scale=1.0),
        train=dataclasses.replace(cfg.train, seed=0),
        mask=dataclasses.replace(cfg.mask, **MASK_DEFAULTS)).to_json()


def group_points(points, max_members: int | None = None) -> list[list]:
    """Points (in spec order) grouped by program_key; groups split to <= max_members members."""
    groups: dict[str, list] = {}
    for p in points:
        groups.setdefault(program_key(p.cfg), []).append(p)
    out = []
    for g in groups.values():
        cur: list = []
        for p in g:
            if cur and max_members and (len(cur) + 1) * p.cfg.train.n_seeds > max_members:
                out.append(cur)
                cur = []
            cur.append(p)
        out.append(cur)
    return out
