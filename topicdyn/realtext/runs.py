"""The real-text experiment's runs: each model on the corpus and on its LDA-fitted twin.

A run is an ordinary run directory, trained through the `topicdyn train` entry point (so it has
theory.json, probes, verdicts, figures and a report like any other) under RUNS_DIR/<source>-<model>.
Finished runs are reused, interrupted ones resumed; training is deterministic, so a resumed run
ends where an uninterrupted one would.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from topicdyn.config import Config, load_config
from topicdyn.jsonl import read_jsonl

RUNS_DIR = Path("runs/real_text")
SOURCES = ("corpus", "twin")
# (label, preset, extra overrides, sources): E and A keep the paper's one-hot / identity maps, so
# their width is the vocabulary (n_vocab); F and the authors' BERT-style variant get width 128
# (at the vocabulary's width, 1004, F trains at ~4 steps/s on 2 cores)
MODELS = (
    ("E", "E", (), SOURCES),
    ("A", "A", (), SOURCES),
    ("F", "F", ("model.d_model=128",), SOURCES),
    ("R", "F", ("model.name=reference", "model.d_model=128"), ("corpus",)),
)
MODEL_TEXT = {"E": "E (embedding only)", "A": "A (attention, W^V = LDA topic block)",
              "F": "F (full model, d=128)", "R": "authors' BERT-style variant (d=128)"}


@dataclass(frozen=True)
class Settings:
    """The experiment's sizes (the defaults are what results/REAL_TEXT.md was made with)."""

    vocab: int = 1000
    topics: int = 10
    steps: int = 1500
    seeds: int = 3
    seeds_reference: int = 2  # the reference variant trains through its definition (slow)
    n_pop_eval: int = 1000
    floor_batches: int = 100  # the twin's Bayes floors (importance sampling at V = vocab)
    models: tuple[str, ...] = ("E", "A", "F", "R")
    topic_numbers: tuple[int, ...] = (5, 10, 20, 40)  # compared for the choice of T
    run_figures: bool = True  # each run's own figures and report.md

    def corpus_overrides(self) -> list[str]:
        return ["data.source=corpus", f"data.vocab_size={self.vocab}", f"data.T={self.topics}"]

    def overrides(self, label: str) -> list[str]:
        seeds = self.seeds_reference if label == "R" else self.seeds
        return [*self.corpus_overrides(), f"train.steps={self.steps}", f"train.n_seeds={seeds}",
                f"train.n_pop_eval={self.n_pop_eval}",
                "train.probes=blocks,attention,loss,dynamics,permuted",
                "train.ckpt_log_points=10", f"train.ckpt_linear_from={min(300, self.steps)}",
                f"train.ckpt_every={max(self.steps // 5, 1)}", "train.log_every=50"]


def run_specs(s: Settings) -> list[tuple[str, str, list[str], str]]:
    """(name, preset, overrides, source) of every run."""
    out = []
    for label, pre, extra, sources in MODELS:
        if label not in s.models:
            continue
        for src in sources:
            out.append((f"{src}-{label}", pre, [*s.overrides(label), *extra], src))
    return out


def _finished(run_dir: Path, s: Settings) -> bool:
    try:
        cfg = load_config(run_dir)
    except Exception:  # noqa: BLE001 - a missing or unreadable config: not finished
        return False
    rows = read_jsonl(run_dir / "verdicts.jsonl", skip_bad=True) if (
        run_dir / "verdicts.jsonl").exists() else []
    return bool(rows) and rows[-1].get("step") == cfg.train.steps and (
        not s.run_figures or (run_dir / "report.md").exists())


def train_all(s: Settings, runs_dir: Path = RUNS_DIR, log=print) -> dict[str, float]:
    """Train (or reuse / resume) every run; {name: seconds spent on it now}."""
    import time

    from topicdyn.cli import main as cli

    seconds = {}
    for name, pre, over, src in run_specs(s):
        d = runs_dir / name
        t = time.perf_counter()
        if _finished(d, s):
            log(f"{name}: finished, reused")
            continue
        quiet = ["--no-progress"] + ([] if s.run_figures else ["--no-figures"])
        if (d / "config.json").exists():
            log(f"{name}: resuming")
            rc = cli(["train", "--resume", str(d), *quiet])
        else:
            log(f"{name}: training")
            if src == "twin":
                _twin_theory(pre, over, d, s)
            rc = cli(["train", "--preset", pre, *over, "--out", str(d), *quiet]
                     + (["--twin"] if src == "twin" else []))
        if rc != 0:
            raise SystemExit(f"real_text: the run {name} failed (exit {rc})")
        seconds[name] = time.perf_counter() - t
    return seconds


def _twin_theory(pre: str, over: list[str], run_dir: Path, s: Settings) -> None:
    """theory.json of a twin run with s.floor_batches floor batches (the CLI keeps a theory.json
    it finds): the twin's Bayes floors are importance sampling over a real vocabulary, ~0.5 s a
    batch, and every twin run shares them (the theory memo)."""
    import dataclasses

    from topicdyn.config import preset
    from topicdyn.corpus.lda import twin_config
    from topicdyn.jsonl import write_atomic
    from topicdyn.verdicts import run_predictions

    cfg = twin_config(preset(pre, over))
    cfg = dataclasses.replace(cfg, preset=f"{cfg.preset}-twin"[:64])
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "theory.json",
                 json.dumps(run_predictions(cfg, n_batches=s.floor_batches), indent=1) + "\n")


@dataclass
class TextRun:
    """A finished run of the experiment: its config, probe rows, verdicts and theory."""

    name: str
    dir: Path
    cfg: Config
    rows: list
    verdicts: dict
    theory: dict
    timing: list

    @property
    def source(self) -> str:
        return self.name.split("-", 1)[0]

    @property
    def model(self) -> str:
        return self.name.split("-", 1)[1]

    def series(self, key: str):
        """(steps (S,), values (S, seeds)) of a probe stat, or None."""
        rows = [r for r in self.rows if r.get(key) is not None]
        if not rows:
            return None
        return np.array([r["step"] for r in rows]), np.array([r[key] for r in rows], float)

    def last(self, key: str) -> np.ndarray | None:
        v = self.rows[-1].get(key) if self.rows else None
        return None if v is None else np.asarray(v, float)

    def steps_per_s(self) -> float:
        """Median steps/s over the logging windows of the second half of training."""
        rows = [r for r in self.timing if r["step"] > self.cfg.train.steps // 2]
        return float(np.median([r["steps_per_s"] for r in rows])) if rows else float("nan")


def load_runs(s: Settings, runs_dir: Path = RUNS_DIR) -> list[TextRun]:
    """Every finished run of the experiment (others are skipped)."""
    out = []
    for name, _, _, _ in run_specs(s):
        d = runs_dir / name
        if not _finished(d, s):
            continue
        v = read_jsonl(d / "verdicts.jsonl")[-1]["claims"]
        out.append(TextRun(name, d, load_config(d), read_jsonl(d / "probes.jsonl"),
                           {c["claim"]: c for c in v},
                           json.loads((d / "theory.json").read_text()),
                           read_jsonl(d / "timing.jsonl", skip_bad=True)))
    return out


def kernel_speed(s: Settings, models=("E", "A", "F")) -> list[dict]:
    """Steps/s of one seed's training program at this vocabulary, through the kernel topicdyn
    selects and through the definition (model.impl=generic), each in a fresh process
    (topicdyn.bench's step case, compilation excluded)."""
    import subprocess
    import sys

    from topicdyn.config import preset
    from topicdyn.models.kernels import select

    out = []
    for label, pre, extra, _ in MODELS:
        if label not in models or label not in s.models:
            continue
        row = {"model": label}
        for impl in ("auto", "generic"):
            over = [*s.corpus_overrides(), *extra, f"model.impl={impl}", "train.chunk=5"]
            case = {"case": "step", "preset": pre, "overrides": over, "min_seconds": 4.0,
                    "min_steps": 10}
            r = subprocess.run([sys.executable, "-m", "topicdyn.bench", json.dumps(case)],
                               capture_output=True, text=True, check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])
            row[impl] = {"impl": select(preset(pre, over)), "steps_per_s": res["steps_per_s"],
                         "compile_s": res["compile_s"], "width": preset(pre, over).d_model}
        out.append(row)
    return out
