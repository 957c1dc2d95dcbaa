"""Figures of a run: files in (config, checkpoints, probes, theory), files out (PNG, GIF).

`plot_run(run_dir)` regenerates every figure of a run into RUN_DIR/figures/ (`topicdyn plot`):

  matrices.png        embedding Gram, value map, score map at the last checkpoint, sorted by topic
  attention_maps.png  attention of sample evaluation documents (tokens sorted by topic)
  blocks.png          same - cross topic gaps over training, theory dashed
  attention.png       same/cross attention ratios (correct and reference labels), KL from uniform
  loss.png            eval loss with the predicted plateau(s) and the Bayes floor; KL to predictors
  two_stage.png       normalised ||W_t - W_0|| of W^V, E, W^Q W^K^T with t50 markers
  value_map.gif, score_map.gif   the matrix over every checkpoint (one frame per checkpoint,
                      one colour scale and palette for all frames, the loss with a marker)

Figures that do not apply to a run's model (attention figures of a uniform-attention regime, a
two-stage figure when fewer than two matrices move) are skipped. The functions never need the
training process; `plot_two_stage(run_dirs, out)` compares several runs (e.g. init scales).
"""
from __future__ import annotations

from pathlib import Path

from topicdyn.config import ConfigError, require_run
from topicdyn.jsonl import read_jsonl
from topicdyn.plots.common import load_checkpoints
from topicdyn.plots.curves import (normalised_changes, plot_attention_curves, plot_blocks,
                                   plot_loss, plot_two_stage, t50_per_seed)
from topicdyn.plots.animation import animate_matrix
from topicdyn.plots.matrices import (animated_matrices, has_attention, plot_attention_maps,
                                     plot_matrices, vocab_matrices)

__all__ = ["animate_matrix", "normalised_changes", "plot_attention_curves",
           "plot_attention_maps", "plot_blocks", "plot_loss", "plot_matrices", "plot_run",
           "plot_two_stage", "t50_per_seed", "vocab_matrices"]


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Every figure of a run (module doc) into out_dir (default RUN_DIR/figures); returns the
    files written. ConfigError if run_dir is not a run or has no checkpoint."""
    from topicdyn.checkpoint import list_checkpoints

    run_dir = Path(run_dir)
    cfg = require_run(run_dir)
    if not list_checkpoints(run_dir):
        raise ConfigError(f"run_dir: {run_dir} has no checkpoints yet; nothing to plot")
    out = Path(out_dir) if out_dir is not None else run_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    frames = list(load_checkpoints(run_dir))  # every checkpoint, restored once
    files = [plot_matrices(run_dir, out / "matrices.png", loaded=frames[-1])]
    if has_attention(cfg):
        files.append(plot_attention_maps(run_dir, out / "attention_maps.png",
                                         loaded=frames[-1]))
    files += [plot_blocks(run_dir, out / "blocks.png"),
              plot_attention_curves(run_dir, out / "attention.png"),
              plot_loss(run_dir, out / "loss.png")]
    if len(normalised_changes(read_jsonl(run_dir / "probes.jsonl"))) >= 2:
        files.append(plot_two_stage([run_dir], out / "two_stage.png"))
    files += [animate_matrix(run_dir, out / f"{w}_map.gif", w, frames=frames)
              for w in animated_matrices(cfg)]
    return [f for f in files if f is not None]
