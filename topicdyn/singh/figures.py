"""Figures of the embedding-space report: each statistic over training against its Bayes
reference (seed bands, one panel per prior x length), the losses against the class ceiling and
the floors, and the principal-component views of token and context vectors (PNG per checkpoint
and a GIF over training)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from topicdyn.plots.common import band, log_x, new_figure, save
from topicdyn.singh.grid import PointRun

COLORS = {"E": "tab:blue", "A1": "tab:orange"}
LINESTYLES = {"E": "-", "A1": "--"}


def _grid(points: list[PointRun]):
    from topicdyn.singh.grid import regime_order
    return regime_order(points)


def stat_figure(points: list[PointRun], key: str, ref_key: str | None, title: str,
                path: Path, const_ref: float | None = None, ref_if=None) -> Path:
    """One panel per (length, prior): key over training per model (seed band), the Bayes
    reference ref_key (its seed mean at each checkpoint, dashed; only for the points where
    ref_if(point) holds, if given) or const_ref."""
    priors, lengths = _grid(points)
    fig = new_figure(3.0 * len(priors), 2.4 * len(lengths))
    axes = fig.subplots(len(lengths), len(priors), squeeze=False, sharex=True)
    for i, ln in enumerate(lengths):
        for j, pr in enumerate(priors):
            ax = axes[i][j]
            ref_drawn = False
            for p in points:
                if p.prior != pr or p.length != ln:
                    continue
                s = p.series(key)
                if s is None:
                    continue
                band(ax, s[0], s[1], p.model, COLORS.get(p.model, "tab:green"),
                     LINESTYLES.get(p.model, ":"))
                r = p.series(ref_key) if ref_key and (ref_if is None or ref_if(p)) else None
                if r is not None and not ref_drawn:
                    ax.plot(r[0][r[0] > 0], r[1].mean(1)[r[0] > 0], color="black", ls="--",
                            lw=1.0, label="Bayes")
                    ref_drawn = True
            if const_ref is not None and not ref_drawn:
                ax.axhline(const_ref, color="black", ls="--", lw=1.0, label="Bayes")
            log_x(ax)
            ax.set_title(f"{pr}, {ln}", fontsize=9)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def loss_figure(points: list[PointRun], path: Path) -> Path:
    """Population loss per model against the class ceiling L_ceil^E (dashed) and the Bayes
    floors (dotted: bayes/visible, the E models' reachable floor; dash-dot: bayes/query)."""
    priors, lengths = _grid(points)
    fig = new_figure(3.0 * len(priors), 2.4 * len(lengths))
    axes = fig.subplots(len(lengths), len(priors), squeeze=False, sharex=True)
    for i, ln in enumerate(lengths):
        for j, pr in enumerate(priors):
            ax = axes[i][j]
            th = None
            for p in points:
                if p.prior != pr or p.length != ln:
                    continue
                s = p.series("loss/pop_loss")
                if s is not None:
                    band(ax, s[0], s[1], p.model, COLORS.get(p.model, "tab:green"),
                         LINESTYLES.get(p.model, ":"))
                th = p.theory
            if th:
                if th.get("class_ceiling"):
                    ax.axhline(th["class_ceiling"]["loss"], color="black", ls="--", lw=1,
                               label="ceiling E")
                for name, ls in (("bayes/visible", ":"), ("bayes/query", "-.")):
                    f = th.get("floors", {}).get(name)
                    if f:
                        ax.axhline(f["loss"], color="gray", ls=ls, lw=1, label=name)
            log_x(ax)
            lo = [p.mean("loss/pop_loss") for p in points if p.prior == pr and p.length == ln]
            if th and th.get("floors", {}).get("bayes/query") and lo:
                ax.set_ylim(th["floors"]["bayes/query"]["loss"] - 0.05, max(lo) + 0.3)
            ax.set_title(f"{pr}, {ln}", fontsize=9)
            if i == 0 and j == 0:
                ax.legend(fontsize=6)
    fig.suptitle("population loss (2000 documents) vs the embedding-only class ceiling and "
                 "the Bayes floors", fontsize=10)
    return save(fig, path)


def _pca(X: np.ndarray, k: int = 2) -> np.ndarray:
    Xc = X - X.mean(0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    return Xc @ vt[:k].T


def _vectors(point: PointRun, steps: list[int]):
    """Per step: (token vectors (V, d), context vectors at the eval [MASK] queries (R, d),
    their dominant visible topic (R,), the walk h(x[:n]) of one document (n_w, d))."""
    import jax

    from topicdyn.models import get_variant
    from topicdyn.plots.common import load_checkpoints, seed_params
    from topicdyn.probes import make_context
    from topicdyn.probes.singh import _eval_mask_rows, at_queries

    cfg = point.cfg
    ctx = make_context(cfg, names=("walk",))
    es = ctx.es
    n_doc, n_w = es["walk_shape"]
    dom = np.argmax(np.asarray(es["mask_prop"]), 1)
    variant = get_variant(cfg.model.name)
    for step, params in load_checkpoints(point.dir, steps):
        p = jax.tree.map(jax.numpy.asarray, seed_params(params, 0))
        E = np.asarray(variant.matrices(p, cfg)["E"])[:cfg.data.V]
        h = np.asarray(_eval_mask_rows(p, ctx, capture=True)["h"])
        walk = np.asarray(at_queries(p, cfg, es["walk_batch"], es["walk_qpos"],
                                     capture=True)["h"][:n_w])
        yield step, E, h, dom, walk


def pca_frames(point: PointRun, steps: list[int], out_dir: Path) -> list[Path]:
    """PNG per checkpoint (token vectors coloured by topic, context vectors coloured by their
    dominant visible topic, one document's walk as tokens are appended) and a GIF of them."""
    from PIL import Image

    from topicdyn.data import word_topic

    wt = word_topic(point.cfg.data)
    paths, frames = [], []
    for step, E, h, dom, walk in _vectors(point, steps):
        fig = new_figure(11, 3.6)
        ax = fig.subplots(1, 3)
        e2 = _pca(E)
        ax[0].scatter(e2[:, 0], e2[:, 1], c=wt, cmap="tab10", s=14)
        ax[0].set_title("token vectors e_w (PC1-2), colour: topic", fontsize=9)
        both = _pca(np.concatenate([h, walk]))
        h2, w2 = both[:len(h)], both[len(h):]
        ax[1].scatter(h2[:, 0], h2[:, 1], c=dom, cmap="tab10", s=8, alpha=0.7)
        ax[1].set_title("context vectors h(O) at [MASK], colour: top topic of O", fontsize=9)
        ax[2].scatter(h2[:, 0], h2[:, 1], c="lightgray", s=6)
        ax[2].plot(w2[:, 0], w2[:, 1], "-o", ms=3, color="tab:red")
        ax[2].annotate("n=1", w2[0], fontsize=7)
        ax[2].set_title("walk of one document: h(x[:n]), n = 1..", fontsize=9)
        fig.suptitle(f"{point.model}, {point.prior}, {point.length}: step {step} (seed 0)",
                     fontsize=10)
        path = save(fig, out_dir / f"pca_step{step:05d}.png", dpi=90)
        paths.append(path)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=70)
        frames.append(Image.open(io.BytesIO(buf.getvalue())).convert("P"))
    if frames:
        gif = out_dir / "pca_training.gif"
        frames[0].save(gif, save_all=True, append_images=frames[1:], duration=900, loop=0)
        paths.append(gif)
    return paths
