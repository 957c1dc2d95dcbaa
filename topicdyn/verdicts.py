"""Claims of P1 as verdicts per checkpoint: pass / fail / not yet converged.

`run_predictions(cfg)` computes the theory for the run's exact config (written to theory.json):
the Bayes floor, the uniform-attention optimum (regimes V and E, and stage 1 of F) and, when W^V
is the frozen topic block, the regime-A optimum. Losses are also evaluated on the run's own
evaluation documents (the ones the probes use), so measured-vs-predicted loss is a paired
comparison without document-sampling noise.

`judge(row, theory, cfg, history)` turns one probes.jsonl row into verdicts. A claim that fails
while its measured value still moved by more than a fifth of its tolerance since the previous
checkpoint is "not yet converged" rather than "fail".
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from topicdyn.config import Config

N_EVAL = 80  # evaluation documents; must match the probe context (probes.runner)


def _applies_linear(cfg: Config) -> bool:
    """A trainable linear map of the key counts under uniform attention: regimes E, V and
    F's stage 1 (E W^V W_dec can be any vocab x vocab map when d >= n_vocab)."""
    m = cfg.model
    return (m.embedding == "trained" or m.value == "trained") and m.decoder != "tied" \
        and not m.residual and not m.layernorm and cfg.d_model >= cfg.data.n_vocab


def _applies_A(cfg: Config) -> bool:
    m = cfg.model
    return m.value == "topic_block" and m.embedding == "onehot" and m.decoder == "identity" \
        and m.n_heads == 1 and not m.residual and not m.layernorm


def run_predictions(cfg: Config, n_docs: int = 4000, n_batches: int = 50, seed: int = 0) -> dict:
    """JSON-able theory predictions for this config (see module doc); ~10-30 s on a CPU."""
    from topicdyn.masking import sample_batch
    from topicdyn.theory import (attention_loss, attention_optimum_A, bayes_loss, linear_loss,
                                 population, symmetric_optimum_V)
    from topicdyn.theory.common import is_disjoint_uniform
    from topicdyn.theory.population import from_batch
    from topicdyn.training import EVAL_STREAM, stream_key

    loss = cfg.model.loss
    out: dict = {"loss": loss, "n_docs": n_docs}
    if loss == "ce":
        b = bayes_loss(cfg, n_batches=n_batches, seed=seed + 12345)
        out["bayes"] = {"loss": b.mean, "stderr": b.stderr, "assumptions": _jsonable(b.assumptions)}
    if not is_disjoint_uniform(cfg):
        out["note"] = "block-symmetric optima need disjoint uniform topics; only the Bayes floor"
        return out
    sample = population(cfg, n_docs=n_docs, seed=seed)
    eval_batch = sample_batch(stream_key(cfg.train.seed, EVAL_STREAM), cfg.data, cfg.mask, N_EVAL)
    eval_sample = from_batch(eval_batch, cfg.data.n_vocab)
    if _applies_linear(cfg):
        o = symmetric_optimum_V(cfg, loss=loss, sample=sample)
        out["uniform_attention"] = {
            "gap": o.gaps["same_minus_cross"], "gap_se": o.gap_se["same_minus_cross"],
            "diag_minus_same": o.gaps["diag_minus_same"],
            "diag_minus_same_se": o.gap_se["diag_minus_same"],
            "plateau": o.plateau, "plateau_se": o.plateau_se,
            "plateau_eval": float(linear_loss(o.matrix, eval_sample, cfg, loss)[0]),
            "assumptions": _jsonable(o.assumptions)}
    if _applies_A(cfg):
        a = attention_optimum_A(cfg, loss=loss, sample=sample)
        out["attention"] = {
            "score_gap": a.score_gap, "score_gap_se": a.score_gap_se,
            "pair_ratio": a.pair_ratio, "plateau": a.plateau, "plateau_se": a.plateau_se,
            "plateau_eval": float(attention_loss(a.score_matrix, eval_sample, cfg, loss)[0]),
            "uniform_loss": a.uniform_loss,
            "uniform_eval": float(attention_loss(np.zeros_like(a.score_matrix), eval_sample,
                                                 cfg, loss)[0]),
            "params": _jsonable(a.params),
            "assumptions": _jsonable(a.assumptions)}
    return out


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def mean_sd(vals) -> tuple[float, float]:
    """(mean, sample sd) of per-seed values (sd 0 for one seed)."""
    a = np.asarray(vals, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _claim(name, paper, predicted, measured, tol, ok, prev=None, how="", threshold=None):
    """One claim's verdict. A failing claim is "not yet converged" while it still moves: for a
    claim with a tolerance, by more than tol/5 since the previous checkpoint; for a threshold
    claim (threshold given, e.g. ratio > 1), when it moves towards the threshold fast enough to
    reach it within 10 more checkpoint gaps. A threshold claim that stalls or moves away fails."""
    m, sd = mean_sd(measured)
    verdict = "pass" if ok(np.asarray(measured, float)) else "fail"
    if verdict == "fail" and prev is not None:
        step = m - mean_sd(prev)[0]
        if threshold is None:
            moving = abs(step) > tol / 5
        else:
            moving = step * (threshold - m) > 0 and 10 * abs(step) >= abs(threshold - m)
        if moving:
            verdict = "not yet converged"
    return {"claim": name, "paper": paper, "predicted": predicted, "measured": m, "sd": sd,
            "tolerance": tol, "verdict": verdict, "how": how}


def t50(steps, deltas) -> float:
    """First step at which ||W_t - W_0|| reaches half its final value (nan if it never moves)."""
    d = np.asarray(deltas, float)
    if d.size == 0 or d[-1] <= 0:
        return float("nan")
    idx = int(np.argmax(d >= 0.5 * d[-1]))
    return float(steps[idx])


def judge(row: dict, theory: dict, cfg: Config, prev: dict | None = None,
          history: list[dict] | None = None) -> list[dict]:
    """Verdicts for one probes row (values are per-seed lists). history: all rows up to it."""
    g = lambda k: row.get(k)  # noqa: E731
    p = (lambda k: prev.get(k)) if prev else (lambda k: None)  # noqa: E731
    out, m = [], cfg.model
    ua, at = theory.get("uniform_attention"), theory.get("attention")
    trained = {x for x in ("embedding", "value") if getattr(m, x) == "trained"}
    uniform = m.attention == "uniform" or m.name == "embedding_only"
    if ua and uniform:
        tol = max(0.1 * abs(ua["gap"]), 3 * ua["gap_se"])
        what = "embedding E (= value map)" if "embedding" in trained and "value" not in trained \
            else "value map E W^V W_dec"
        out.append(_claim(
            "block structure (same - cross)", f"{what} has topic-block structure",
            ua["gap"], g("blocks/value_gap"), tol,
            lambda v: abs(v.mean() - ua["gap"]) <= tol, p("blocks/value_gap"),
            "row-centred content block; tolerance 10% or 3 MC s.e."))
        tol = 0.02 if cfg.model.loss == "ce" else 0.02 * ua["plateau_eval"]
        out.append(_claim(
            "loss at the uniform-attention optimum", "stage-wise optimum is block-structured",
            ua["plateau_eval"], g("loss/eval_loss"), tol,
            lambda v: abs(v.mean() - ua["plateau_eval"]) <= tol, p("loss/eval_loss"),
            "eval-set loss vs the symmetric optimum's loss on the same documents"))
        if "embedding" in trained and g("blocks/gram_gap") is not None:
            out.append(_claim(
                "embedding Gram: same-topic > cross-topic", "same-topic words have larger "
                "embedding inner products", None, g("blocks/gram_gap"), 0.0,
                lambda v: v.min() > 0, None, "row-centred E E^T, every seed"))
    if at:
        tol = max(0.15 * abs(at["score_gap"]), 3 * at["score_gap_se"])
        out.append(_claim(
            "score gap (same - cross topic)", "attention is topic-biased",
            at["score_gap"], g("blocks/score_gap"), tol,
            lambda v: abs(v.mean() - at["score_gap"]) <= tol, p("blocks/score_gap"),
            "row-centred W^Q W^K^T / sqrt(d); tolerance 15% or 3 MC s.e."))
        tol = 0.02 if cfg.model.loss == "ce" else 0.02 * at["plateau_eval"]
        out.append(_claim(
            "loss at the attention optimum", "stage-2 optimum", at["plateau_eval"],
            g("loss/eval_loss"), tol, lambda v: abs(v.mean() - at["plateau_eval"]) <= tol,
            p("loss/eval_loss"), "eval-set loss vs the optimum's loss on the same documents"))
    if at:
        out.append(_claim(
            "below uniform attention", "topic-biased attention lowers the loss",
            at["uniform_eval"], g("loss/eval_loss"), 0.0,
            lambda v: v.max() < at["uniform_eval"], p("loss/eval_loss"),
            "every seed below the uniform-attention loss of the frozen block W^V, eval set",
            threshold=at["uniform_eval"]))
    if not uniform and g("attention/ratio") is not None:
        out.append(_claim(
            "same-topic attention bias (P1 pooling)", "same-topic pairs get more attention "
            "than cross-topic pairs", ">1", g("attention/ratio_all"), 0.0,
            lambda v: v.min() > 1.0, p("attention/ratio_all"),
            "normalised attention same-topic (identical words included) / cross-topic, every "
            "seed, correct labels", threshold=1.0))
        out.append(_claim(
            "same-topic bias, other words only", "(a stricter reading)", ">1",
            g("attention/ratio"), 0.0, lambda v: v.min() > 1.0, p("attention/ratio"),
            "as above with identical words excluded: separates topic bias from copying",
            threshold=1.0))
    if not uniform and "value" in trained and history:
        steps = [r["step"] for r in history]
        n = len(row["dynamics/delta_WV"])
        tv = [t50(steps, [r["dynamics/delta_WV"][i] for r in history]) for i in range(n)]
        tq = [t50(steps, [r["dynamics/delta_QK"][i] for r in history]) for i in range(n)]
        c = _claim("value-first two-stage order", "W^V learns before W^K, W^Q",
                   "t50(W^V) < t50(W^Q W^K^T)", [q - v for v, q in zip(tv, tq)], 0.0,
                   lambda d: bool(np.all(d > 0)), None,
                   "t50 = first checkpoint with half the final change; measured = t50(QK) - "
                   "t50(V) in steps, every seed")
        c["t50_value"], c["t50_qk"] = mean_sd(tv)[0], mean_sd(tq)[0]
        out.append(c)
    if ua and not uniform:
        out.append(_claim(
            "below the stage-1 plateau", "attention lowers the loss below uniform attention",
            ua["plateau_eval"], g("loss/eval_loss"), 0.0,
            lambda v: v.max() < ua["plateau_eval"], p("loss/eval_loss"),
            "every seed below the uniform-attention optimum on the eval set",
            threshold=ua["plateau_eval"]))
    if g("loss/bayes_loss") is not None and cfg.model.loss == "ce":  # a CE floor
        floor = float(np.mean(g("loss/bayes_loss")))
        gap = [a - b for a, b in zip(g("loss/eval_loss"), g("loss/bayes_loss"))]
        c = _claim("excess loss over the Bayes floor", "(reported)", floor, gap, 0.0,
                   lambda v: True, None, "eval loss minus Bayes-optimal loss on the same "
                   "positions: a distance, not a claim")
        c["verdict"] = "reported"
        out.append(c)
    return out


def judge_run(run_dir: str | Path, write: bool = True) -> list[dict]:
    """Verdicts for every probed checkpoint of a run (verdicts.jsonl); returns the last."""
    from topicdyn.config import load_config
    from topicdyn.probes.runner import read_probes

    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    theory = json.loads((run_dir / "theory.json").read_text())
    rows = read_probes(run_dir)
    lines, last = [], []
    for i, row in enumerate(rows):
        last = judge(row, theory, cfg, rows[i - 1] if i else None, rows[: i + 1])
        lines.append(json.dumps({"step": row["step"], "claims": last}))
    if write:
        (run_dir / "verdicts.jsonl").write_text("".join(x + "\n" for x in lines))
    return last


def format_table(claims: list[dict]) -> str:
    """claim | predicted | measured (mean ± sd over seeds) | verdict, as aligned text."""
    def fmt(x):
        if x is None:
            return "-"
        return f"{x:.4g}" if isinstance(x, (int, float)) else str(x)
    rows = [("claim", "predicted", "measured (mean ± sd)", "verdict")]
    for c in claims:
        rows.append((c["claim"], fmt(c["predicted"]), f"{c['measured']:.4g} ± {c['sd']:.2g}",
                     c["verdict"]))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(" | ".join(r[i].ljust(w[i]) for i in range(4)) for r in rows)
