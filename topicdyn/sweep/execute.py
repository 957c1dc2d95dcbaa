"""Running a sweep: plan (which points are done, where the others resume), then each group.

Sweep directory:
    sweep.json                   the spec as given, its points (name, values) and the groups
    points/<name>/               a standard run directory per point (see topicdyn/run.py)
    sweep_summary.jsonl, .csv    one row per point x seed (summary.py)
    figures/                     metric vs one or two swept axes (plots.py)

Resume: a point is done when its last checkpoint, a probe row for every checkpoint (if probes
are on), theory.json and verdicts.jsonl exist; done points are skipped. The others of a group
resume together from the latest checkpoint that every one of them has, with probes complete up
to it (a fresh point makes the group start at 0; training is deterministic, so a point that
was further along ends bit-for-bit where it would have).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from topicdyn.config import ConfigError, load_config
from topicdyn.jsonl import write_atomic
from topicdyn.sweep.spec import Point, Spec, group_points


def point_state(spec: Spec, p: Point) -> dict:
    """{"resume": step to resume from (-1: fresh), "done": bool}; ConfigError if the point's
    directory holds a different config."""
    d = spec.point_dir(p)
    if not (d / "config.json").exists():
        return {"resume": -1, "done": False}
    try:
        saved = load_config(d)
    except ConfigError as e:
        raise ConfigError(f"point {p.name}: {d} has an unreadable config ({e})") from None
    if saved != p.cfg:
        raise ConfigError(f"point {p.name}: {d} holds a run with a different config; remove it "
                          f"or give the sweep another out directory")
    from topicdyn.rundir import resume_step

    # the latest intact checkpoint with every earlier one probed; -1: the point starts again
    resume, _ = resume_step(p.cfg, d, spec.probes)
    last = p.cfg.train.steps
    done = resume == last and (not spec.probes or ((d / "verdicts.jsonl").exists()
                                                    and (d / "theory.json").exists()))
    return {"resume": resume, "done": done}


def plan(spec: Spec) -> list[dict]:
    """Groups in spec order: {"points": [...], "pending": [...], "start": step or None}."""
    states = {p.name: point_state(spec, p) for p in spec.points}
    out = []
    for g in group_points(spec.points, spec.max_members):
        pending = [p for p in g if not states[p.name]["done"]]
        start = max(0, min(states[p.name]["resume"] for p in pending)) if pending else None
        if pending and start == pending[0].cfg.train.steps:  # all trained and probed: verdicts
            start = "judge"
        out.append({"points": g, "pending": pending, "start": start, "states": states})
    return out


def describe_plan(spec: Spec) -> list[str]:
    """Lines for `topicdyn sweep --dry-run`: groups, vmapped fields, each point's state."""
    from topicdyn.sweep.spec import VMAPPED

    groups = plan(spec)
    lines = [f"sweep {spec.name}: {len(spec.points)} points x {spec.seeds} seeds, "
             f"{len(groups)} compiled group(s) -> {spec.out}"]
    for i, g in enumerate(groups):
        vary = [f for f in VMAPPED if len({_field(p.cfg, f) for p in g["points"]}) > 1]
        st = g["start"]
        lines.append(f"group {i + 1}: {len(g['points'])} point(s), "
                     f"{len(g['points']) * spec.seeds} members"
                     + (f", vmapped: {', '.join(vary)}" if vary else "")
                     + (f"; trains from step {st}" if isinstance(st, int) else
                        "; verdicts only" if st == "judge" else "; done"))
        for p in g["points"]:
            st = g["states"][p.name]
            what = "done" if st["done"] else (f"resume from step {st['resume']}"
                                              if st["resume"] > 0 else "new")
            lines.append(f"  {p.name}: {what}")
    return lines


def _field(cfg, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def run_sweep(spec: Spec, **kw) -> dict:
    """Train every pending point of the spec, then write the summary and figures (see
    _run_sweep); the sweep directory is locked against a second writer meanwhile."""
    from topicdyn.faults import DirLock
    from topicdyn.loop import is_writer

    if not is_writer():
        return _run_sweep(spec, **kw)
    with DirLock(spec.out, "out"):
        return _run_sweep(spec, **kw)


def _run_sweep(spec: Spec, *, progress: bool = True, stop_at: int | None = None,
               log: Callable[[str], None] | None = None, mesh=None,
               log_to: tuple[str, ...] = ()) -> dict:
    """Train every pending point of the spec, then write the summary and figures; log_to:
    experiment trackers (topicdyn.trackers) for every trained point.

    Returns {"devices", "groups", "points": {name: "skipped" | "trained from <step>" |
    "judged"}, "summary": path}. stop_at: interrupt each trained group after the checkpoint at
    that step (tests)."""
    import jax

    from topicdyn.loop import Group, barrier, broadcast, is_writer, member_mesh, train_group
    from topicdyn.memory import check_memory
    from topicdyn.rundir import prepare_point

    writer = is_writer()
    log = (log or (lambda s: print(s, flush=True))) if writer else (lambda s: None)
    mesh = mesh if mesh is not None else member_mesh()
    groups = plan(spec)
    if jax.process_count() > 1:  # every process follows process 0's reading of the files
        starts = broadcast(np.array([_code(g["start"]) for g in groups]))
        for g, s in zip(groups, starts.tolist()):
            g["start"] = None if s == -1 else "judge" if s == -2 else int(s)
            if g["start"] is None:
                g["pending"] = []
    for g in groups:  # refuse a group that cannot fit before any directory is touched
        if g["pending"] and g["start"] != "judge":
            check_memory(Group([p.cfg for p in g["pending"]], []).program()[0],
                         len(g["pending"]) * spec.seeds, mesh.devices.size)
    if writer:
        _write_sweep_json(spec, groups, mesh.devices.size)
    n_dev = mesh.devices.size
    log(f"sweep {spec.name}: {len(spec.points)} points x {spec.seeds} seeds in {len(groups)} "
        f"compiled group(s), {n_dev} device(s) -> {spec.out}")
    report = {"devices": n_dev, "groups": len(groups), "points": {}}
    for gi, g in enumerate(groups):
        for p in g["points"]:
            if p not in g["pending"]:
                report["points"][p.name] = "skipped"
        if not g["pending"]:
            log(f"group {gi + 1}/{len(groups)}: all {len(g['points'])} point(s) done, skipped")
            continue
        pend = g["pending"]
        dirs = [spec.point_dir(p) for p in pend]
        if g["start"] == "judge":
            if writer:
                _write_theory(spec, pend, dirs, log)
                _judge(dirs)
            report["points"].update({p.name: "judged" for p in pend})
            continue
        start = g["start"]
        log(f"group {gi + 1}/{len(groups)}: {len(pend)} point(s) x {spec.seeds} seeds "
            f"({', '.join(p.name for p in pend)}) from step {start}")
        if writer:
            for p, d in zip(pend, dirs):
                prepare_point(p.cfg, d, start)
            if spec.probes:
                _write_theory(spec, pend, dirs, log)
        barrier("group")  # process 0 has prepared the directories
        group = Group([p.cfg for p in pend], dirs)
        from topicdyn.trackers import make_sinks
        sinks = make_sinks(log_to, dirs, start) if writer else []
        train_group(group, mesh, start, _prober_factory(spec, group) if spec.probes else None,
                    progress=progress, stop_at=stop_at, sinks=sinks)
        if writer and spec.probes:
            _judge(dirs)
        report["points"].update({p.name: f"trained from {start}" for p in pend})
    if writer:
        from topicdyn.sweep.summary import write_summary
        report["summary"] = str(write_summary(spec))
        try:
            from topicdyn.sweep.plots import plot_sweep
            report["figures"] = [str(f) for f in plot_sweep(spec)]
        except Exception as e:  # noqa: BLE001 - the data are on disk; say how to redo the figures
            print(f"sweep figures failed ({type(e).__name__}: {e}); retry with: topicdyn sweep "
                  f"SPEC --summary-only", file=sys.stderr)
    barrier("end")  # no process shuts the distributed runtime down while process 0 writes
    return report


def _code(start) -> int:
    return -1 if start is None else -2 if start == "judge" else int(start)



def _write_sweep_json(spec: Spec, groups: list[dict], n_dev: int) -> None:
    spec.out.mkdir(parents=True, exist_ok=True)
    doc = {"name": spec.name, "spec": spec.raw, "axes": list(spec.axes), "seeds": spec.seeds,
           "devices": n_dev,
           "points": [{"name": p.name, "values": p.values} for p in spec.points],
           "groups": [[p.name for p in g["points"]] for g in groups]}
    write_atomic(spec.out / "sweep.json", json.dumps(doc, indent=1, default=str) + "\n")


def _write_theory(spec: Spec, points: list[Point], dirs: list[Path], log) -> None:
    """theory.json per point: computed once per distinct theory content (run_predictions is
    memoised by the theory package: lr and init scale do not enter it; the masking does, and
    the evaluation documents depend on train.seed)."""
    from topicdyn.verdicts import run_predictions

    for p, d in zip(points, dirs):
        path = d / "theory.json"
        if path.exists():
            continue
        if not spec.theory:
            pred = {"loss": p.cfg.model.loss, "note": "theory skipped (sweep spec theory=false)"}
        else:
            log(f"  theory predictions for {p.name} ...")
            pred = run_predictions(p.cfg)
        write_atomic(path, json.dumps(pred, indent=1) + "\n")


def _prober_factory(spec: Spec, group) -> Callable:
    """params0 -> one GroupProber per (train.seed, mask) in the group (one evaluation set
    each: the evaluation documents follow the seed, their masking the point's mask)."""
    from topicdyn.sweep.group import GroupProber

    def make(params0) -> list:
        import jax

        by_eval_set: dict[tuple, list[int]] = {}
        for i, c in enumerate(group.cfgs):
            by_eval_set.setdefault((c.train.seed, c.mask), []).append(i)
        out, sl = [], group.slices()
        for idx in by_eval_set.values():
            members = np.concatenate([np.arange(sl[i].start, sl[i].stop) for i in idx])
            n, views = group.n_seeds, []
            for k, i in enumerate(idx):
                views.append((group.dirs[i], k * n, (k + 1) * n))
            p0 = jax.tree.map(lambda x: np.asarray(x)[members], params0)
            out.append(GroupProber(group.cfgs[idx[0]], members, views, p0))
        return out

    return make


def _judge(dirs: list[Path]) -> None:
    from topicdyn.verdicts import judge_run

    for d in dirs:
        judge_run(d)
