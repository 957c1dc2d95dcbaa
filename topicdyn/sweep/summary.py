"""sweep_summary.jsonl / .csv: one row per point x seed, read back from the points' files.

Columns: point, the swept axes, seed, lr, init_scale; `final_loss` (training loss, mean over
the last logging window) and `final_loss_last` (last step); every probe statistic at the last
checkpoint (`blocks/value_gap`, `attention/ratio`, `loss/pop_loss` (population estimate),
`loss/eval_loss` (fixed eval set), ...); `bayes_gap` (population loss minus the Bayes floor this
model class can reach, named in `theory/reachable_floor_name`); `t50/value`, `t50/qk`, `t50/embedding`
(first checkpoint with half the final ||W_t - W_0||) and `t50/lag` = t50/qk - t50/value;
`theory/*` predictions from theory.json; `verdict/<claim>` for this seed alone.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from topicdyn.config import load_config
from topicdyn.jsonl import read_jsonl
from topicdyn.sweep.spec import Spec

# probe metric -> theory columns that predict it (plots overlay them)
THEORY_OF = {
    "blocks/value_gap": ("theory/uniform_gap",),
    "blocks/score_gap": ("theory/score_gap",),
    "loss/pop_loss": ("theory/attention_plateau", "theory/uniform_plateau",
                      "theory/reachable_floor"),
    "loss/eval_loss": ("theory/attention_plateau_eval", "theory/uniform_plateau_eval"),
    "final_loss": ("theory/attention_plateau", "theory/uniform_plateau", "theory/reachable_floor"),
    "t50/value": ("predicted/t50_value",),
    "t50/qk": ("predicted/t50_qk",),
    "t50/embedding": ("predicted/t50_embedding",),
    "t50/lag": ("predicted/t50_lag",),
}
THEORY_LABEL = {
    "theory/uniform_gap": "uniform-attention optimum",
    "theory/uniform_plateau": "uniform-attention optimum",
    "theory/score_gap": "regime-A optimum",
    "theory/attention_plateau": "regime-A optimum",
    "theory/attention_plateau_eval": "regime-A optimum, eval set",
    "theory/uniform_plateau_eval": "uniform-attention optimum, eval set",
    "theory/reachable_floor": "Bayes floor reachable by the model",
    **{f"predicted/t50_{g}": "reduced block-symmetric dynamics" for g in
       ("value", "qk", "embedding", "lag")},
}


def predicted_columns(run_dir: Path) -> dict:
    """predicted/* columns from the run's reduced-dynamics prediction (predicted.json, written
    with the verdicts): the predicted t50s, lag and final population loss (point_rows adds
    predicted/band, the band claim over all the point's seeds)."""
    from topicdyn.plots.common import read_predicted

    pred = read_predicted(run_dir)
    if not pred:
        return {}
    t = pred.get("t50") or {}
    out = {f"predicted/t50_{g}": t.get(k, math.nan)
           for g, k in (("value", "WV"), ("qk", "QK"), ("embedding", "E"))}
    out["predicted/t50_lag"] = pred["lag"] if pred.get("lag") is not None else math.nan
    out["predicted/pop_loss"], out["predicted/pop_loss_se"] = pred["loss"][-1], pred["loss_se"]
    return out


def theory_columns(theory: dict) -> dict:
    """Population predictions (theory/<name>, with theory/<name>_se), the floors by name and
    the optima's losses on the run's eval set (theory/*_eval)."""
    out = {}
    for name, fl in (theory.get("floors") or {}).items():
        out[f"theory/{name}"], out[f"theory/{name}_se"] = fl["loss"], fl["stderr"]
    if theory.get("reachable_floor"):
        name = theory["reachable_floor"]["name"]
        out["theory/reachable_floor"] = theory["floors"][name]["loss"]
        out["theory/reachable_floor_name"] = name
    ua, at = theory.get("uniform_attention"), theory.get("attention")
    if ua:
        out["theory/uniform_gap"], out["theory/uniform_gap_se"] = ua["gap"], ua["gap_se"]
        out["theory/uniform_plateau"] = ua["plateau"]
        out["theory/uniform_plateau_se"] = ua["plateau_se"]
        out["theory/uniform_plateau_eval"] = ua["plateau_eval"]
    if at:
        out["theory/score_gap"], out["theory/score_gap_se"] = at["score_gap"], at["score_gap_se"]
        out["theory/attention_plateau"] = at["plateau"]
        out["theory/attention_plateau_se"] = at["plateau_se"]
        out["theory/attention_plateau_eval"] = at["plateau_eval"]
        out["theory/uniform_loss"] = at["uniform_loss"]
        out["theory/uniform_eval"] = at["uniform_eval"]
    return out


def _t50(probes: list[dict], key: str, j: int) -> float:
    from topicdyn.verdicts import t50

    rows = [r for r in probes if key in r]
    if not rows:
        return math.nan
    return t50([r["step"] for r in rows], [r[key][j] for r in rows])


def _seed_slice(row: dict, j: int) -> dict:
    return {k: ([v[j]] if isinstance(v, list) else v) for k, v in row.items()}


def point_rows(run_dir: Path, values: dict, name: str) -> list[dict]:
    """Summary rows (one per seed) of one point's run directory; [] if it has no metrics."""
    from topicdyn.plots.common import read_predicted
    from topicdyn.verdicts import judge

    cfg = load_config(run_dir)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    if not metrics:
        return []
    probes = read_jsonl(run_dir / "probes.jsonl")
    theory_path = run_dir / "theory.json"
    theory = json.loads(theory_path.read_text()) if theory_path.exists() else {}
    last_m, last_p = metrics[-1], (probes[-1] if probes else {})
    th = theory_columns(theory)
    pred = predicted_columns(run_dir)
    if pred and probes:  # the band needs every seed: judged once per point
        from topicdyn.claims.trajectory import band_check, reference

        band = band_check(reference(read_predicted(run_dir))[0], probes)
        pred["predicted/band"] = {None: "not decidable here", True: "holds",
                                  False: "refuted"}[band["inside"]]
    rows = []
    for j in range(cfg.train.n_seeds):
        row = {"point": name, **values, "seed": cfg.train.seed + j, "lr": cfg.optim.lr,
               "init_scale": cfg.model.init_scale, "step": last_m["step"],
               "final_loss": last_m["loss"][j], "final_loss_last": last_m["loss_last"][j]}
        row.update({k: v[j] for k, v in last_p.items() if isinstance(v, list)})
        if "loss/pop_loss" in row and "theory/reachable_floor" in th:
            row["bayes_gap"] = row["loss/pop_loss"] - th["theory/reachable_floor"]
        t = {g: _t50(probes, f"dynamics/delta_{k}", j)
             for g, k in (("value", "WV"), ("qk", "QK"), ("embedding", "E"))}
        row.update({f"t50/{g}": v for g, v in t.items()})
        row["t50/lag"] = t["qk"] - t["value"]
        row.update(th)
        row.update(pred)
        if probes and theory:
            hist = [_seed_slice(r, j) for r in probes]
            th_j = {**theory, "reduced": read_predicted(run_dir)} if pred else theory
            claims = judge(hist[-1], th_j, cfg, hist[-2] if len(hist) > 1 else None, hist)
            row.update({f"verdict/{c['claim']}": c["verdict"] for c in claims})
        rows.append(row)
    return rows


def summary_rows(spec: Spec) -> list[dict]:
    rows = []
    for p in spec.points:
        d = spec.point_dir(p)
        if (d / "config.json").exists():
            rows += point_rows(d, p.values, p.name)
    return rows


def write_summary(spec: Spec) -> Path:
    """Write sweep_summary.jsonl and .csv under the sweep directory; returns the .csv path."""
    rows = summary_rows(spec)
    spec.out.mkdir(parents=True, exist_ok=True)
    jl = spec.out / "sweep_summary.jsonl"
    jl.write_text("".join(json.dumps(_clean(r)) + "\n" for r in rows))
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    path = spec.out / "sweep_summary.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in cols})
    return path


def read_summary(sweep_dir: str | Path) -> list[dict]:
    return read_jsonl(Path(sweep_dir) / "sweep_summary.jsonl")


def _clean(r: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in r.items()}


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(v)
    return v


def seed_stats(rows: list[dict], metric: str) -> tuple[float, float, float]:
    """(mean, min, max) of a metric over rows (NaN/None ignored)."""
    v = np.array([r[metric] for r in rows if isinstance(r.get(metric), (int, float))], float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    return float(v.mean()), float(v.min()), float(v.max())
