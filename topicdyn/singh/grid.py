"""Reading the embedding-space grid's points: per point its regime (prior, length, model), the
last probes row, verdicts and theory."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from topicdyn.config import Config, load_config
from topicdyn.jsonl import read_jsonl

CLAIM_NAMES = ("S1 redundant attention", "S2 no in-context learning",
               "S3 one distribution over paths", "S4 nearness reflects probability",
               "S5 encoding walk", "S6 concept directions")


def prior_label(cfg: Config) -> str:
    d = cfg.data
    return f"k={d.k} equal" if d.prior == "k_topics" else f"Dir({d.alpha:g})"


def length_label(cfg: Config) -> str:
    d = cfg.data
    return f"N={d.N_min}" if d.N_min == d.N_max else f"N={d.N_min}-{d.N_max}"


def model_label(cfg: Config) -> str:
    if cfg.model.name == "embedding_only":
        return "E"
    return "A1" if cfg.model.n_heads == 1 else f"A{cfg.model.n_heads}"


@dataclass
class PointRun:
    dir: Path
    cfg: Config
    rows: list  # probes.jsonl
    verdicts: dict  # claim -> row at the last checkpoint
    theory: dict

    @property
    def prior(self) -> str:
        return prior_label(self.cfg)

    @property
    def length(self) -> str:
        return length_label(self.cfg)

    @property
    def model(self) -> str:
        return model_label(self.cfg)

    @property
    def last(self) -> dict:
        return self.rows[-1]

    def mean(self, key: str, row: dict | None = None) -> float:
        v = (row or self.last).get(key)
        return float(np.mean(v)) if v is not None else float("nan")

    def series(self, key: str):
        """(steps (S,), values (S, seeds)) of a probe stat, or None."""
        rows = [r for r in self.rows if r.get(key) is not None]
        if not rows:
            return None
        return (np.array([r["step"] for r in rows]),
                np.array([r[key] for r in rows], float))


def regime_order(points: list) -> tuple[list[str], list[str]]:
    """(priors, lengths) in reading order: k-topics by k, then Dirichlet by alpha; fixed
    lengths by N, then ranged ones."""
    pri = sorted({(p.cfg.data.prior != "k_topics", p.cfg.data.k if p.cfg.data.prior == "k_topics"
                   else p.cfg.data.alpha, p.prior) for p in points})
    lng = sorted({(p.cfg.data.N_min != p.cfg.data.N_max, p.cfg.data.N_min, p.cfg.data.N_max,
                   p.length) for p in points})
    return [x[-1] for x in pri], [x[-1] for x in lng]


def load_points(sweep_dir: Path) -> list[PointRun]:
    """Every finished point of the sweep directory (a point without verdicts is skipped)."""
    out = []
    for d in sorted((sweep_dir / "points").iterdir()):
        if not (d / "verdicts.jsonl").exists():
            continue
        v = read_jsonl(d / "verdicts.jsonl")[-1]["claims"]
        out.append(PointRun(d, load_config(d), read_jsonl(d / "probes.jsonl"),
                            {c["claim"]: c for c in v},
                            json.loads((d / "theory.json").read_text())))
    return out
