"""RUN_DIR/report.md: the claims table at the last checkpoint, figures, theory assumptions.

`write_report(run_dir)` reads config.json, theory.json, probes.jsonl and verdicts.jsonl (the
verdicts are recomputed in memory when verdicts.jsonl is missing) and links the figures found in
RUN_DIR/figures (`topicdyn plot`). Used by `topicdyn report` and at the end of `topicdyn train`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from topicdyn.config import Config, ConfigError, require_run

FIGURES = (  # file, caption
    ("loss.png", "Eval loss with the predicted plateau(s) and the Bayes floor; KL from simple "
                 "predictors"),
    ("blocks.png", "Same-topic minus cross-topic gaps of the Gram, value and score maps "
                   "(theory dashed)"),
    ("attention.png", "Same/cross-topic attention ratios (correct and reference labelling), "
                      "attention per key category, KL from uniform"),
    ("two_stage.png", "Normalised change of W^V, E and W^Q W^K^T with t50 markers"),
    ("matrices.png", "Embedding Gram, value map and score map at the last checkpoint, sorted "
                     "by topic"),
    ("attention_maps.png", "Attention of sample evaluation documents, tokens sorted by topic"),
    ("value_map.gif", "The value map over every checkpoint"),
    ("score_map.gif", "The score map over every checkpoint"),
)


def fmt(x, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, (int, float)):
        if isinstance(x, float) and not math.isfinite(x):
            return "n/a"
        return f"{x:.{digits}g}"
    return str(x)


def cell(text) -> str:
    """A markdown table cell: pipes escaped, no newlines."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def measured(c: dict, n_seeds: int) -> str:
    if c["measured"] is None:
        return "-"
    if n_seeds > 1:
        return f"{fmt(c['measured'])} ± {fmt(c['sd'], 2)}"
    return fmt(c["measured"])


def _with_se(text: str, se) -> str:
    return text + (f" (s.e. {fmt(se, 2)})" if se else "")


def claims_cells(claims: list[dict], n_seeds: int, how: bool = True
                 ) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the claims table: claim | paper's statement | predicted (s.e.) |
    measured mean ± sd (s.e.) | basis | eval set: predicted / measured | verdict
    [| tolerance / how]; cells are plain text."""
    head = ["claim", "paper's statement", "predicted (MC s.e.)", f"measured (mean ± sd, "
            f"{n_seeds} seed{'s' if n_seeds > 1 else ''}; s.e.)" if n_seeds > 1 else
            "measured (1 seed; s.e.)", "basis",
            "eval set: predicted / measured", "verdict"] + (["tolerance / how"] if how else [])
    rows = []
    for c in claims:
        pair = "-"
        if c.get("measured_eval") is not None:
            pair = f"{fmt(c.get('predicted_eval'))} / {fmt(c['measured_eval'])}"
        basis = (c.get("basis") or "-") + (f"; floor {c['floor']}" if c.get("floor") else "")
        row = [c["claim"], c["paper"], _with_se(fmt(c["predicted"]), c.get("predicted_se")),
               _with_se(measured(c, n_seeds), c.get("measured_se")), basis, pair, c["verdict"]]
        if how:
            tol = f"tolerance {fmt(c['tolerance'], 3)}; " if c.get("tolerance") else ""
            extra = ""
            if "t50_value" in c:
                extra = f" (t50 W^V = {fmt(c['t50_value'])}, t50 QK = {fmt(c['t50_qk'])})"
            row.append(tol + c.get("how", "") + extra)
        rows.append(row)
    return head, rows


def claims_table(claims: list[dict], n_seeds: int, how: bool = True) -> str:
    """The claims table (claims_cells) as markdown: the verdict in bold, the floor as code."""
    head, rows = claims_cells(claims, n_seeds, how)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c, row in zip(claims, rows):
        row = list(row)
        row[4] = (c.get("basis") or "-") + (f"; floor `{c['floor']}`" if c.get("floor") else "")
        row[6] = f"**{row[6]}**"
        lines.append("| " + " | ".join(cell(x) for x in row) + " |")
    return "\n".join(lines)


def last_claims(run_dir: str | Path) -> tuple[int, list[dict]]:
    """(step, claims) at the last probed checkpoint: verdicts.jsonl, else judged in memory."""
    from topicdyn.jsonl import read_jsonl

    run_dir = Path(run_dir)
    rows = read_jsonl(run_dir / "verdicts.jsonl")
    if rows:
        return rows[-1]["step"], rows[-1]["claims"]
    probes = read_jsonl(run_dir / "probes.jsonl")
    if not probes:
        raise ConfigError(f"run_dir: {run_dir} has no probes.jsonl; probe it first "
                          f"(topicdyn probe {run_dir})")
    if not (run_dir / "theory.json").exists():
        raise ConfigError(f"run_dir: {run_dir} has no theory.json; run topicdyn probe "
                          f"{run_dir} to compute it")
    from topicdyn.verdicts import judge_run
    return probes[-1]["step"], judge_run(run_dir, write=False)


def assumptions_summary(theory: dict) -> list[str]:
    """Bullet lines: each theory block's assumptions, shared entries listed once."""
    out, seen = [], {}
    floors = {"assumptions": theory["floor_assumptions"]} if "floor_assumptions" in theory \
        else None
    for block, title in (("floors", "Bayes floors"), ("uniform_attention",
                                                      "uniform-attention optimum (V/E/F stage 1)"),
                         ("attention", "regime-A optimum")):
        b = floors if block == "floors" else theory.get(block)
        if not b or "assumptions" not in b:
            continue
        items = []
        for k, v in b["assumptions"].items():
            text = v if isinstance(v, str) else json.dumps(v)
            if seen.get(k) == text:
                continue
            seen[k] = text
            items.append(f"  - {k}: {text}")
        out.append(f"- **{title}**" + (":" if items else " (as above)"))
        out += items
    if theory.get("note"):
        out.append(f"- note: {theory['note']}")
    return out


def config_summary(cfg: Config) -> str:
    d, m, k, o, t = cfg.data, cfg.model, cfg.mask, cfg.optim, cfg.train
    return (f"preset **{cfg.preset}**; data T={d.T}, v={d.v}, alpha={d.alpha:g}, N in "
            f"[{d.N_min}, {d.N_max}], batch {d.batch_size}; model {m.name} (embedding "
            f"{m.embedding}, attention {m.attention}, W^V {m.value}, decoder {m.decoder}, "
            f"{m.loss} loss, init scale {m.init_scale:g}); masking p_mask={k.p_mask:g}, "
            f"MASK/random/keep = {k.p_replace_mask:g}/{k.p_replace_random:g}/{k.p_keep:g}, "
            f"keys {k.key_set}; {o.name} lr {o.lr:g}; {t.steps} steps, {t.n_seeds} seed"
            f"{'s' if t.n_seeds > 1 else ''} from {t.seed}")


VERDICT_NOTE = (
    "Verdicts: *pass* / *fail* / *not yet converged* (a failing value that still moved by more "
    "than a fifth of its tolerance since the previous checkpoint); *not decidable here*: the "
    "tolerance admits every plausible value, so the test could not fail; *reported*: a distance "
    "shown for information, not a claim. Predictions are population values with their Monte "
    "Carlo s.e.; *basis* says what the measured value is (the model's population estimate on "
    "{n_pop} fresh documents, or the fixed evaluation set of {n_eval}); the eval-set column is "
    "the paired comparison on the fixed evaluation documents. Every checkpoint's verdicts are "
    "in `verdicts.jsonl`; probe values in `probes.jsonl`.")


def report_parts(run_dir: str | Path) -> dict:
    """What a run's report says, before it is written as markdown or HTML: title, config
    summary, notes (loss, throughput), step and claims, the verdict note, the figures present
    [(file, caption)] and the theory's assumptions (bullet lines)."""
    from topicdyn.jsonl import read_jsonl
    from topicdyn.plots.common import read_theory

    run_dir = Path(run_dir)
    cfg = require_run(run_dir)
    step, claims = last_claims(run_dir)
    n = cfg.train.n_seeds
    notes = []
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    timing = read_jsonl(run_dir / "timing.jsonl")
    if metrics:
        last = metrics[-1]
        window = (f"the last {last['loss_window']} steps" if "loss_window" in last else
                  "since the previous log row")
        notes.append(f"Training loss at step {last['step']} (mean over seeds and {window}): "
                     f"{sum(last['loss']) / len(last['loss']):.4f}.")
    if timing:
        rates = sorted(r["steps_per_s"] for r in timing)
        notes.append(f"Throughput: median {rates[len(rates) // 2]:.0f} steps/s "
                     f"({n} seed{'s' if n > 1 else ''} per step).")
    fig_dir = run_dir / "figures"
    return {"title": f"Run report: {run_dir.name}", "config": config_summary(cfg) + ".",
            "notes": notes, "step": step, "claims": claims, "n_seeds": n,
            "verdict_note": VERDICT_NOTE.format(n_pop=cfg.train.n_pop_eval,
                                                n_eval=cfg.train.n_eval),
            "figures": [(f, c) for f, c in FIGURES if (fig_dir / f).exists()],
            "assumptions": assumptions_summary(read_theory(run_dir))}


def write_report(run_dir: str | Path, out: str | Path | None = None,
                 html: bool = True) -> Path:
    """Write RUN_DIR/report.md (or `out`) and, with html, report.html beside it (figures
    embedded: topicdyn.report_html); returns the markdown's path. ConfigError if the run has
    no config, probes or theory."""
    run_dir = Path(run_dir)
    parts = report_parts(run_dir)
    lines = [f"# {parts['title']}", "", parts["config"], ""] + parts["notes"]
    lines += ["", f"## Claims at the last checkpoint (step {parts['step']})", "",
              claims_table(parts["claims"], parts["n_seeds"]), "", parts["verdict_note"], ""]
    fig_dir = run_dir / "figures"
    lines += ["## Figures", ""]
    path = Path(out) if out is not None else run_dir / "report.md"
    if parts["figures"]:
        rel = Path("figures") if path.parent.resolve() == run_dir.resolve() else fig_dir
        for f, caption in parts["figures"]:
            lines += [f"**{caption}** (`{f}`)", "", f"![{caption}]({(rel / f).as_posix()})", ""]
    else:
        lines += [f"No figures yet: `topicdyn plot {run_dir}` writes them to figures/.", ""]
    lines += ["## Theory: what the predictions assume", ""]
    lines += (parts["assumptions"] or ["theory.json has no predictions for this config."]) + [""]
    path.write_text("\n".join(lines))
    if html:
        from topicdyn.report_html import write_html
        write_html(parts, run_dir, path.with_suffix(".html"))
    return path
