"""GIFs of a vocabulary matrix over every checkpoint, made for comparing frames.

One colour scale for every frame (symmetric, from the last checkpoint, where the blocks are
largest) and one palette for the whole file: the frames are drawn as RGB, a single 256-colour
palette is chosen from all of them, and every frame is mapped onto it without dithering, so a
colour means the same value in every frame. Below the matrix, the run's loss over training
(the population estimate, else the eval-set loss, else the training loss) with a marker at the
frame's checkpoint; the title names the step and that loss.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from topicdyn.config import require_run
from topicdyn.jsonl import read_jsonl
from topicdyn.plots.common import load_checkpoints, new_figure, seed_params
from topicdyn.plots.matrices import (TITLES, draw_matrix, robust_limit, topic_order,
                                     vocab_matrices)

GIF_SIZE = (6.4, 6.8)  # inches at GIF_DPI: 640 x 680 pixels
GIF_DPI = 100


def frame_losses(run_dir, steps: list[int], seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(steps, loss of member `seed` at each, what the loss is) at the given checkpoint steps:
    probes' population estimate, else their eval-set loss, else metrics.jsonl's training loss
    (its rows include every checkpoint step); NaN where a step has no value."""
    cfg = require_run(run_dir)
    probes = {r["step"]: r for r in read_jsonl(Path(run_dir) / "probes.jsonl")}
    metrics = {r["step"]: r for r in read_jsonl(Path(run_dir) / "metrics.jsonl")}
    for rows, key, what in ((probes, "loss/pop_loss", "population loss"),
                            (probes, "loss/eval_loss", f"eval loss ({cfg.train.n_eval} docs)"),
                            (metrics, "loss", "training loss")):
        if any(key in r for r in rows.values()):
            vals = [rows.get(s, {}).get(key) for s in steps]
            return (np.asarray(steps, float),
                    np.array([v[seed] if v is not None else np.nan for v in vals]), what)
    return np.asarray(steps, float), np.full(len(steps), np.nan), "loss"


def one_palette(frames: list[np.ndarray]):
    """A 256-colour palette image chosen from every frame together (median cut)."""
    from PIL import Image

    stack = np.concatenate(frames, axis=0)
    return Image.fromarray(stack).quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                           dither=Image.Dither.NONE)


def animate_matrix(run_dir: str | Path, out: str | Path, which: str = "value", seed: int = 0,
                   fps: int = 4, frames: list[tuple[int, dict]] | None = None) -> Path:
    """GIF of one vocabulary matrix (gram, value or score) of member `seed` over every
    checkpoint (module doc). frames: optional pre-loaded [(step, params)]."""
    from PIL import Image

    cfg = require_run(run_dir)
    frames = list(load_checkpoints(run_dir)) if frames is None else frames
    mats = [(s, vocab_matrices(seed_params(p, seed), cfg)[which]) for s, p in frames]
    order, _ = topic_order(cfg)
    lim = robust_limit(mats[-1][1][np.ix_(order, order)])
    steps, loss, what = frame_losses(run_dir, [s for s, _ in mats], seed)

    fig = new_figure(*GIF_SIZE, constrained=False)
    fig.set_dpi(GIF_DPI)
    grid = fig.add_gridspec(2, 1, height_ratios=(4.3, 1.0), hspace=0.32, left=0.11,
                            right=0.97, top=0.9, bottom=0.08)
    ax = fig.add_subplot(grid[0])
    im = draw_matrix(fig, ax, mats[0][1], cfg, "", lim)
    title = ax.set_title("", fontsize=9)
    lines = list(ax.lines)  # topic boundaries: drawn over the image
    axl = fig.add_subplot(grid[1])
    ok = np.isfinite(loss)
    axl.plot(steps[ok], loss[ok], "-", color="tab:gray", lw=1.2)
    axl.set_xscale("symlog", linthresh=1.0)  # step 0 included
    axl.set_xlabel("training step (log scale past 1)", fontsize=8)
    axl.set_ylabel(what, fontsize=7)
    axl.tick_params(labelsize=7)
    axl.grid(True, alpha=0.3)
    (marker,) = axl.plot([], [], "o", color="tab:red", ms=7, mec="black")
    fig.suptitle(f"seed {cfg.train.seed + seed}; one colour scale (±{lim:.3g}) for all frames",
                 fontsize=8)
    for a in [im, title, marker] + lines:
        a.set_animated(True)
    fig.canvas.draw()
    background = fig.canvas.copy_from_bbox(fig.bbox)
    rgb = []
    for (s, M), y in zip(mats, loss):
        fig.canvas.restore_region(background)
        im.set_data(M[np.ix_(order, order)])
        title.set_text(f"{TITLES[which]}\nstep {s}" + (f", {what} {y:.4f}"
                                                       if np.isfinite(y) else ""))
        marker.set_data([s] if np.isfinite(y) else [], [y] if np.isfinite(y) else [])
        for a in [im] + lines:
            ax.draw_artist(a)
        ax.draw_artist(title)
        axl.draw_artist(marker)
        fig.canvas.blit(fig.bbox)
        rgb.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    pal = one_palette(rgb)
    images = [Image.fromarray(f).quantize(palette=pal, dither=Image.Dither.NONE) for f in rgb]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # palette=: the one palette is the file's global colour table and no frame gets its own
    images[0].save(out, save_all=True, append_images=images[1:], duration=int(1000 / fps),
                   loop=0, optimize=False, palette=pal.getpalette())
    return out
