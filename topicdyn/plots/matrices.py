"""Heatmaps in vocabulary space, sorted by topic with topic boundaries drawn, and animations.

Matrices (one seed, content words only, rows and columns sorted by `topicdyn.data.word_topic`):
  gram   E E^T of the row-centred embedding (only when the embedding is trained)
  value  the value map E W^V W_dec, row-centred (a per-row constant is invisible to softmax)
  score  the score map E W^Q W^K^T E^T / sqrt(d_head), row-centred
the same matrices and centring as the `blocks` probe. Attention maps show sample evaluation
documents (the probes' evaluation set): content-word queries x keys, each sorted by the topic of
the word shown, as log2(attention x number of keys), so 0 is uniform attention.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from topicdyn.config import Config, require_run
from topicdyn.models import get_variant
from topicdyn.models.variant import TRAINED_ATTENTION, TRAINED_EMBEDDING, TRAINED_VALUE
from topicdyn.plots.common import (load_checkpoints, new_figure, run_label,
                                   save, seed_params)

TITLES = {"gram": r"embedding Gram $E E^\top$ (row-centred $E$)",
          "value": r"value map $E\,W^V W_{dec}$ (row-centred)",
          "score": r"score map $E\,W^Q W^{K\top} E^\top/\sqrt{d}$ (row-centred)"}
ATTN_CLIP = 4.0  # log2 units: attention 16x above / below uniform saturates


def has_attention(cfg: Config) -> bool:
    return TRAINED_ATTENTION in get_variant(cfg.model.name).traits(cfg)


def animated_matrices(cfg: Config) -> list[str]:
    """Matrices worth animating: those a trained group changes."""
    traits, out = get_variant(cfg.model.name).traits(cfg), []
    if traits & {TRAINED_EMBEDDING, TRAINED_VALUE} or cfg.model.decoder == "trained":
        out.append("value")
    if has_attention(cfg):
        out.append("score")
    return out


_MAPS: dict = {}


def vocab_maps(params: dict, cfg: Config):
    """(E, value map, score map or None) of layer 1, numpy: the variant's matrices
    (Variant.matrices, which the `blocks` probe reads too), jitted once per config so plotting
    many checkpoints stays fast."""
    if cfg not in _MAPS:
        import jax
        variant = get_variant(cfg.model.name)
        _MAPS[cfg] = jax.jit(lambda p: variant.matrices(p, cfg))
    mats = {k: np.asarray(v, np.float64) for k, v in _MAPS[cfg](params).items()}
    return mats.get("E"), mats["value_map/1"], mats.get("score_map/1")


def _center_rows(M: np.ndarray, V: int) -> np.ndarray:
    """As topicdyn.probes.stats.center_rows: subtract each row's mean over content columns."""
    return M - M[:, :V].mean(axis=1, keepdims=True)


def vocab_matrices(params: dict, cfg: Config) -> dict[str, np.ndarray]:
    """{name: (V, V) numpy} of one seed's params (see module doc), in word order (unsorted)."""
    V = cfg.data.V
    E, value_map, score_map = vocab_maps(params, cfg)
    out = {}
    if cfg.model.embedding == "trained":
        Ec = _center_rows(E, V)
        out["gram"] = (Ec @ Ec.T)[:V, :V]
    out["value"] = _center_rows(value_map, V)[:V, :V]
    if score_map is not None and has_attention(cfg):
        out["score"] = _center_rows(score_map, V)[:V, :V]
    return out


def topic_order(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(order, topic of each sorted word): a stable sort of the content words by topic."""
    from topicdyn.data import topic_labels

    wt = topic_labels(cfg.data)
    wt = np.where(wt < 0, cfg.data.T, wt)  # words without a label (LDA fits) last
    order = np.argsort(wt, kind="stable")
    return order, wt[order]


def robust_limit(M: np.ndarray) -> float:
    """Symmetric colour limit: the 99th percentile of the off-diagonal |entries| (the diagonal
    may saturate; it is often much larger and would wash out the blocks)."""
    a = np.abs(np.asarray(M, float))
    off = a[~np.eye(a.shape[0], dtype=bool)] if a.shape[0] > 1 else a.ravel()
    lim = float(np.percentile(off, 99)) if off.size else 0.0
    if not np.isfinite(lim) or lim <= 0:
        lim = float(a.max()) if a.size and a.max() > 0 else 1.0
    return lim


def _group_ticks(ax, labels: np.ndarray, names: dict | None = None, axis: str = "both",
                 color: str = "k") -> None:
    """Boundary lines between runs of equal labels, and a tick at the centre of each run."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return
    cuts = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [labels.size]])
    centres = (starts + ends - 1) / 2
    text = [(names or {}).get(int(labels[s]), f"t{int(labels[s])}") for s in starts]
    show_text = len(starts) <= 24
    for c in cuts:
        if axis in ("both", "x"):
            ax.axvline(c - 0.5, color=color, lw=0.7)
        if axis in ("both", "y"):
            ax.axhline(c - 0.5, color=color, lw=0.7)
    if axis in ("both", "x"):
        ax.set_xticks(centres if show_text else [])
        ax.set_xticklabels(text if show_text else [], fontsize=7, rotation=90)
    if axis in ("both", "y"):
        ax.set_yticks(centres if show_text else [])
        ax.set_yticklabels(text if show_text else [], fontsize=7)


def draw_matrix(fig, ax, M: np.ndarray, cfg: Config, title: str, lim: float | None = None):
    """Heatmap of a (V, V) matrix sorted by topic, boundaries drawn; returns the image."""
    order, topics = topic_order(cfg)
    S = np.asarray(M)[np.ix_(order, order)]
    lim = robust_limit(S) if lim is None else lim
    im = ax.imshow(S, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    _group_ticks(ax, topics)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("word (sorted by topic)", fontsize=8)
    ax.set_ylabel("word (sorted by topic)", fontsize=8)
    cb = fig.colorbar(im, ax=ax, shrink=0.8, extend="both")
    cb.ax.tick_params(labelsize=7)
    cb.set_label("clipped at the 99th percentile of |off-diagonal|", fontsize=7)
    return im


def _checkpoint(run_dir, step: int | None, loaded: tuple[int, dict] | None):
    """(step, params) of a checkpoint (default: the last), or the pre-loaded one."""
    from topicdyn.checkpoint import list_checkpoints

    if loaded is not None:
        return loaded
    step = list_checkpoints(run_dir)[-1]["step"] if step is None else step
    (loaded,) = load_checkpoints(run_dir, [step])
    return loaded


def plot_matrices(run_dir: str | Path, out: str | Path, step: int | None = None,
                  seed: int = 0, loaded: tuple[int, dict] | None = None) -> Path:
    """Gram, value map and score map (those the model has) of one checkpoint (default: last;
    loaded: an already restored (step, params))."""
    cfg = require_run(run_dir)
    step, params = _checkpoint(run_dir, step, loaded)
    mats = vocab_matrices(seed_params(params, seed), cfg)
    fig = new_figure(max(5.0, 4.3 * len(mats)), 4.6)
    axes = fig.subplots(1, len(mats), squeeze=False)[0]
    for ax, (name, M) in zip(axes, mats.items()):
        draw_matrix(fig, ax, M, cfg, TITLES[name])
    fig.suptitle(f"Vocabulary-space matrices at step {step}, seed {cfg.train.seed + seed}\n"
                 f"{run_label(cfg, seeds=False)}; lines = topic boundaries", fontsize=10)
    return save(fig, out)


def pick_documents(batch, cfg: Config, n: int) -> np.ndarray:
    """The n evaluation documents with the most topics among their shown words (the most mixed,
    so topic bias is visible), ties broken by document index."""
    from topicdyn.data import topic_labels

    wt = topic_labels(cfg.data)
    wt = np.where(wt < 0, cfg.data.T, wt)  # no label: a bin of its own, not counted
    inp, ok = np.asarray(batch.inputs), np.asarray(batch.valid) & (np.asarray(batch.inputs)
                                                                  < cfg.data.V)
    eff = []
    for b in range(inp.shape[0]):
        counts = np.bincount(wt[inp[b][ok[b]]], minlength=cfg.data.T + 1)[:cfg.data.T]
        counts = counts.astype(float)
        p = counts / max(counts.sum(), 1)
        nz = p[p > 0]
        eff.append(float(np.exp(-(nz * np.log(nz)).sum())) if nz.size else 0.0)
    return np.argsort(-np.asarray(eff), kind="stable")[:n]


def attention_panel(attn: np.ndarray, inputs: np.ndarray, key_mask: np.ndarray,
                    valid: np.ndarray, cfg: Config):
    """(log2 normalised attention sorted (queries x keys), query topics, key topics) for one
    document; attn (L, L) averaged over heads. Special keys (START, END) come last."""
    from topicdyn.data import topic_labels

    V, T = cfg.data.V, cfg.data.T
    wt = topic_labels(cfg.data)
    wt = np.where(wt < 0, T, wt)  # no label: with the specials
    lab = np.where(inputs < V, wt[np.minimum(inputs, V - 1)], T)
    q = np.flatnonzero(valid & (inputs < V))
    k = np.flatnonzero(key_mask)
    q = q[np.lexsort((inputs[q], lab[q]))]
    k = k[np.lexsort((inputs[k], lab[k]))]
    A = attn[np.ix_(q, k)] * len(k)
    A = np.clip(np.log2(np.maximum(A, 2.0 ** -ATTN_CLIP)), -ATTN_CLIP, ATTN_CLIP)
    return A, lab[q], lab[k]


def plot_attention_maps(run_dir: str | Path, out: str | Path, step: int | None = None,
                        seed: int = 0, n_docs: int = 4,
                        loaded: tuple[int, dict] | None = None) -> Path:
    """Attention of a few evaluation documents (module doc), one panel per document."""
    import jax

    cfg = require_run(run_dir)
    step, params = _checkpoint(run_dir, step, loaded)
    from topicdyn.probes import eval_batch

    batch = eval_batch(cfg)
    docs = pick_documents(batch, cfg, n_docs)
    sub = jax.tree.map(lambda x: x[docs], batch)
    model = get_variant(cfg.model.name)
    attention = jax.jit(lambda p, b: model.apply(p, b, cfg, capture=True)[1]["attention"])
    attn = np.asarray(attention(seed_params(params, seed), sub)).mean(1)  # (n, L, L)
    ncol = min(len(docs), 2)
    nrow = -(-len(docs) // ncol)
    fig = new_figure(5.0 * ncol, 4.6 * nrow)
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    names = {cfg.data.T: "sp"}
    im = None
    for ax, i, b in zip(axes, range(len(docs)), docs):
        A, ql, kl = attention_panel(attn[i], np.asarray(sub.inputs[i]),
                                    np.asarray(sub.key_mask[i]), np.asarray(sub.valid[i]), cfg)
        im = ax.imshow(A, cmap="RdBu_r", vmin=-ATTN_CLIP, vmax=ATTN_CLIP, aspect="auto",
                       interpolation="nearest")
        _group_ticks(ax, ql, names, axis="y")
        _group_ticks(ax, kl, names, axis="x")
        ax.set_title(f"eval doc {int(b)}: {A.shape[0]} queries x {A.shape[1]} keys",
                     fontsize=9)
        ax.set_xlabel("key (sorted by topic of its word; sp = START/END)", fontsize=8)
        ax.set_ylabel("query: content word shown (sorted by topic)", fontsize=8)
    for ax in axes[len(docs):]:
        ax.set_visible(False)
    if im is not None:
        cb = fig.colorbar(im, ax=list(axes[:len(docs)]), shrink=0.8, extend="both")
        cb.set_label("log2(attention x number of keys); 0 = uniform", fontsize=8)
    fig.suptitle(f"Attention on sample evaluation documents, step {step}, seed "
                 f"{cfg.train.seed + seed}\n{run_label(cfg, seeds=False)}; lines = topic "
                 "boundaries", fontsize=10)
    return save(fig, out)
