"""The population of MLM queries, as sufficient statistics.

Without positional encoding a one-layer model's output at a query depends only on the query's
shown token and on the multiset of key tokens of its document (topicdyn/models/fast.py). So a
population (or a sample of it) is: per document the key-token counts, per query (selected
position) its document, shown token and target. Two estimators produce one:

- `monte_carlo_sample`: documents from topicdyn.masking.sample_batch (the training pipeline);
  documents are iid, so errors are computed with documents as clusters.
- `enumerate_batch` / `exact_sample`: every (length, word sequence, masking outcome) of a tiny
  config with its exact probability, for checks with no Monte Carlo error at all.

Losses are ratios E[sum of losses over selected positions] / E[number of selected positions],
the large-batch limit of training.masked_loss (a per-batch mean of ratios differs by O(1/(batch
selected count)), far below the Monte Carlo errors quoted).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import jax
import numpy as np

from topicdyn.config import Config
from topicdyn.masking import (NOT_SELECTED, SHOW_KEEP, SHOW_MASK, SHOW_RANDOM, MLMBatch,
                              sample_batch)
from topicdyn.theory.cache import memoized
from topicdyn.theory.common import beta_matrix, n_random_ids
from topicdyn.theory.posterior import prior_moment

_sample_jit = jax.jit(sample_batch, static_argnums=(1, 2, 3))


@dataclass(frozen=True)
class PopulationSample:
    """Queries of a population sample. D documents, Q queries (selected positions)."""

    key_counts: np.ndarray  # (D, n_vocab) float64 key-token counts (see from_batch: empty keys)
    doc_weight: np.ndarray  # (D,) probability weights (Monte Carlo: all 1)
    q_doc: np.ndarray  # (Q,) int document of each query
    q_token: np.ndarray  # (Q,) int shown token at the query
    q_target: np.ndarray  # (Q,) int true word
    estimator: str  # "monte_carlo" or "enumeration"
    description: str  # e.g. "Monte Carlo, 20000 documents, seed 0"

    @property
    def n_docs(self) -> int:
        return len(self.doc_weight)

    @property
    def q_weight(self) -> np.ndarray:
        return self.doc_weight[self.q_doc]

    def doc_query_weight(self) -> np.ndarray:
        """(D,) weighted number of queries per document (the denominators of the losses)."""
        return np.bincount(self.q_doc, weights=self.q_weight, minlength=self.n_docs)


def from_batch(batch, n_vocab: int, doc_weight: np.ndarray | None = None) -> PopulationSample:
    """Sufficient statistics of an MLMBatch (numpy or jax arrays).

    A document whose key set is empty (only possible without START/END) gets the counts of all
    its L slots, PAD included, as key counts: that is what the generic model does (every score
    is -1e30, so the softmax is uniform over all slots), and the fast model copies it.
    """
    inputs, key_mask, sel = (np.asarray(a) for a in (batch.inputs, batch.key_mask, batch.selected))
    B, L = inputs.shape
    rows = np.repeat(np.arange(B), L)
    kc = np.zeros((B, n_vocab))
    np.add.at(kc, (rows, inputs.reshape(-1)), key_mask.reshape(-1).astype(np.float64))
    empty = kc.sum(1) == 0
    if empty.any():
        allc = np.zeros((B, n_vocab))
        np.add.at(allc, (rows, inputs.reshape(-1)), 1.0)
        kc[empty] = allc[empty]
    b, pos = np.nonzero(sel)
    w = np.ones(B) if doc_weight is None else np.asarray(doc_weight, np.float64)
    return PopulationSample(kc, w, b, inputs[b, pos], np.asarray(batch.targets)[b, pos],
                            "monte_carlo", f"{B} documents")


def concat(samples: list[PopulationSample], estimator: str, description: str) -> PopulationSample:
    """Stack samples (document indices are offset)."""
    offs = np.cumsum([0] + [s.n_docs for s in samples[:-1]])
    return PopulationSample(
        np.concatenate([s.key_counts for s in samples]),
        np.concatenate([s.doc_weight for s in samples]),
        np.concatenate([s.q_doc + o for s, o in zip(samples, offs)]),
        np.concatenate([s.q_token for s in samples]),
        np.concatenate([s.q_target for s in samples]), estimator, description)


def mc_batches(cfg: Config, n_batches: int, seed: int, batch_size: int | None = None):
    """Iterator of fresh MLMBatches (the training pipeline) with keys fold_in(PRNGKey(seed), i)."""
    root = jax.random.PRNGKey(seed)
    B = batch_size or cfg.data.batch_size
    for i in range(n_batches):
        yield jax.device_get(_sample_jit(jax.random.fold_in(root, i), cfg.data, cfg.mask, B))


def monte_carlo_sample(cfg: Config, n_docs: int = 20000, seed: int = 0,
                       chunk: int = 2000) -> PopulationSample:
    """n_docs iid documents from topicdyn.masking.sample_batch, as a PopulationSample."""
    n_chunks = -(-n_docs // chunk)
    parts = [from_batch(b, cfg.data.n_vocab)
             for b in mc_batches(cfg, n_chunks, seed, min(chunk, n_docs))]
    s = concat(parts, "monte_carlo", f"Monte Carlo, {n_chunks * min(chunk, n_docs)} documents "
                                     f"from topicdyn.masking.sample_batch, seed {seed}")
    return s


def _position_options(cfg: Config) -> list[tuple[int, int, float]]:
    """(kind, shown token or -1 for 'its own word', probability) of one content position."""
    m, d = cfg.mask, cfg.data
    nr = n_random_ids(cfg)
    opts = [(NOT_SELECTED, -1, 1 - m.p_mask), (SHOW_MASK, d.MASK, m.p_mask * m.p_replace_mask),
            (SHOW_KEEP, -1, m.p_mask * m.p_keep)]
    opts += [(SHOW_RANDOM, r, m.p_mask * m.p_replace_random / nr) for r in range(nr)]
    return [o for o in opts if o[2] > 0]


def enumeration_size(cfg: Config) -> int:
    """Number of (document, masking outcome) rows of the exact enumeration."""
    d, S = cfg.data, len(_position_options(cfg))
    return sum((d.V * S) ** n for n in range(d.N_min, d.N_max + 1))


def sequence_probability(cfg: Config, words: np.ndarray) -> np.ndarray:
    """P(w_1..w_N) (M,) of word sequences (M, N) under the generator, by summing over all topic
    assignments: sum_z prod_j beta[z_j, w_j] * E[prod_t theta_t^{k_t(z)}]."""
    beta, T = beta_matrix(cfg), cfg.data.T
    M, N = words.shape
    total = np.zeros(M)
    for z in itertools.product(range(T), repeat=N):
        z = np.asarray(z)
        lik = np.prod(beta[z[None, :], words], axis=1)
        if lik.any():
            total += lik * prior_moment(cfg, np.bincount(z, minlength=T)[None])[0]
    return total


def enumerate_batch(cfg: Config, max_rows: int = 400_000) -> tuple[MLMBatch, np.ndarray]:
    """Every document and masking outcome of a tiny config as one numpy MLMBatch, with weights.

    Returns (batch, weight (R,)): weight = P(N) P(words) P(masking outcome), summing to 1.
    batch.topics is -1 and batch.theta 0 (not determined by the words in general).
    """
    d = cfg.data
    size = enumeration_size(cfg)
    if size > max_rows:
        raise ValueError(f"exact enumeration needs {size} rows (> max_rows={max_rows}); use the "
                         f"Monte Carlo estimator")
    opts = _position_options(cfg)
    kinds = np.array([o[0] for o in opts])
    toks = np.array([o[1] for o in opts])
    probs = np.array([o[2] for o in opts])
    L, off = d.seq_len, 1 if d.start_end else 0
    parts = []
    for N in range(d.N_min, d.N_max + 1):
        words = np.array(list(itertools.product(range(d.V), repeat=N)), dtype=np.int64)
        pw = sequence_probability(cfg, words)
        words, pw = words[pw > 0], pw[pw > 0]
        combos = np.array(list(itertools.product(range(len(opts)), repeat=N)), dtype=np.int64)
        pc = np.prod(probs[combos], axis=1)
        wi, ci = np.meshgrid(np.arange(len(words)), np.arange(len(combos)), indexing="ij")
        wi, ci = wi.reshape(-1), ci.reshape(-1)
        R = len(wi)
        clean = np.full((R, L), d.PAD, np.int64)
        if d.start_end:
            clean[:, 0], clean[:, N + 1] = d.START, d.END
        clean[:, off:off + N] = words[wi]
        kind = np.zeros((R, L), np.int64)
        kind[:, off:off + N] = kinds[combos[ci]]
        shown = clean.copy()
        t = toks[combos[ci]]
        shown[:, off:off + N] = np.where(t >= 0, t, words[wi])
        valid = clean != d.PAD
        selected = kind != NOT_SELECTED
        key_mask = valid & ~selected if cfg.mask.key_set == "unselected" else valid
        weight = pw[wi] * pc[ci] / (d.N_max - d.N_min + 1)
        parts.append((shown, clean, selected, key_mask, kind, valid, weight))
    cat = [np.concatenate([p[i] for p in parts]) for i in range(7)]
    shown, clean, selected, key_mask, kind, valid, weight = cat
    R = len(weight)
    batch = MLMBatch(shown.astype(np.int32), clean.astype(np.int32), selected, key_mask,
                     kind.astype(np.int32), np.full((R, L), -1, np.int32),
                     np.zeros((R, d.T), np.float32), valid)
    return batch, weight


def exact_sample(cfg: Config, max_rows: int = 400_000) -> PopulationSample:
    """The whole population of a tiny config (enumerate_batch) as a PopulationSample."""
    batch, w = enumerate_batch(cfg, max_rows)
    s = from_batch(batch, cfg.data.n_vocab, w)
    return PopulationSample(s.key_counts, s.doc_weight, s.q_doc, s.q_token, s.q_target,
                            "enumeration", f"exact enumeration of {len(w)} (document, masking) "
                                           f"outcomes")


@memoized(("data", "mask"), maxsize=8)
def population(cfg: Config, estimator: str = "auto", n_docs: int = 20000, seed: int = 0,
               max_rows: int = 200_000) -> PopulationSample:
    """Exact enumeration when estimator='enumeration' (or 'auto' and it has <= max_rows rows),
    else a Monte Carlo sample of n_docs documents."""
    if estimator not in ("auto", "enumeration", "monte_carlo"):
        raise ValueError(f"estimator: auto | enumeration | monte_carlo, got {estimator!r}")
    if estimator == "enumeration" or (estimator == "auto" and enumeration_size(cfg) <= max_rows):
        return exact_sample(cfg, max(max_rows, enumeration_size(cfg))
                            if estimator == "enumeration" else max_rows)
    return monte_carlo_sample(cfg, n_docs, seed)


def describe_sample(s: PopulationSample) -> str:
    q = len(s.q_doc)
    if s.estimator == "enumeration":
        return s.description + f" ({q} weighted queries); no Monte Carlo error"
    return s.description + f" ({q} queries); standard errors with documents as iid clusters"

