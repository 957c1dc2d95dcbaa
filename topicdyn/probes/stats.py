"""Pure statistics the probes are built from (numpy-free JAX, vmappable over seeds).

Block statistics of a square matrix restricted to content words (V x V):
  diag   mean of M[w, w]
  same   mean of M[w, w'] over w != w' of the same topic
  cross  mean of M[w, w'] over words of different topics
  gap    same - cross;   block_score: share of the variance of the entries explained by the three
         groups (diag / same / cross), 1 for an exact block matrix.
Softmax cannot see a constant added to every logit of a query, nor a constant added to every score
of a query. So matrices whose rows feed such sums are row-centred first (`center_rows`): that keeps
gaps unchanged (they are differences within a row) and makes levels comparable across runs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def doc_token_counts(tokens, mask, nv: int) -> np.ndarray:
    """(B, nv) float counts of each token among the positions of each document where mask
    holds (numpy; tokens, mask (B, L))."""
    tokens, mask = np.asarray(tokens), np.asarray(mask).astype(bool)
    ids = np.nonzero(mask)[0] * nv + tokens[mask]
    return np.bincount(ids, minlength=tokens.shape[0] * nv).reshape(-1, nv).astype(np.float64)


def group_masks(word_topic: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(diag, same-topic off-diagonal, cross-topic) boolean masks, each (V, V)."""
    wt = np.asarray(word_topic)
    same = wt[:, None] == wt[None, :]
    eye = np.eye(len(wt), dtype=bool)
    return eye, same & ~eye, ~same


def center_rows(M: jnp.ndarray, V: int) -> jnp.ndarray:
    """Subtract from each row its mean over the V content-word columns."""
    return M - jnp.mean(M[:, :V], axis=1, keepdims=True)


def block_stats(M: jnp.ndarray, word_topic: np.ndarray) -> dict:
    """Block statistics of M[:V, :V] (see module doc), over the words with a topic (a label
    of -1, e.g. below an LDA fit's threshold, leaves the word out). M: (>=V, >=V)."""
    wt = np.asarray(word_topic)
    V = len(wt)
    A = M[:V, :V]
    if (wt < 0).any():
        keep = np.flatnonzero(wt >= 0)
        A, wt = A[keep][:, keep], wt[keep]
    eye, same, cross = group_masks(wt)
    out, fitted = {}, jnp.zeros_like(A)
    for name, m in (("diag", eye), ("same", same), ("cross", cross)):
        cnt = max(int(m.sum()), 1)
        mean = jnp.sum(jnp.where(m, A, 0.0)) / cnt
        out[name] = mean
        fitted = jnp.where(m, mean, fitted)
    out["gap"] = out["same"] - out["cross"]
    total = jnp.sum((A - jnp.mean(A)) ** 2)
    out["block_score"] = jnp.where(total > 0, 1.0 - jnp.sum((A - fitted) ** 2) /
                                   jnp.maximum(total, 1e-30), 1.0)
    return out


DENSE_EIG_MAX = 256  # up to this size a dense eigensolver is faster than Lanczos iteration


def stable_rank(M: jnp.ndarray) -> jnp.ndarray:
    """||M||_F^2 / ||M||_2^2 (0 for the zero matrix).

    The singular values come from numpy on the host (a callback), not from XLA:CPU's LAPACK
    kernels: a batched (vmapped) SVD or eigh kernel blocks an intra-op pool thread while it
    waits for the tasks it queued in that pool, so two running at once (the dynamics probe takes
    two stable ranks; probes run beside training) deadlock a 2-thread pool. Probes run once
    per checkpoint on small matrices, so the host round trip costs nothing that matters.

    Only the top singular value is needed: ||M||_2^2 is the largest eigenvalue of the smaller
    Gram matrix, found by Lanczos iteration (ARPACK, fixed start vector, converged to machine
    precision) above DENSE_EIG_MAX: a dense decomposition of a 1000-word vocabulary's matrix
    takes seconds on a CPU, Lanczos a fraction of one."""
    def top_eig(m):
        G = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
        n = G.shape[0]
        if n <= DENSE_EIG_MAX:
            return float(np.linalg.eigvalsh(G)[-1])
        if not G.any():
            return 0.0
        from scipy.sparse.linalg import eigsh
        # a fixed generic start vector (a constant one is orthogonal to row-centred matrices)
        v0 = np.random.default_rng(0).normal(size=n)
        return float(eigsh(G, k=1, which="LA", v0=v0, tol=1e-12,
                           return_eigenvectors=False)[0])

    def host(m):
        m = np.asarray(m, np.float64)
        flat = m.reshape((-1,) + m.shape[-2:])
        top = np.array([top_eig(x) for x in flat]).reshape(m.shape[:-2])
        fro = np.sum(m ** 2, axis=(-2, -1))
        out = np.where(top > 0, fro / np.maximum(top, 1e-300), 0.0)
        return np.asarray(out, np.float32)

    return jax.pure_callback(host, jax.ShapeDtypeStruct(M.shape[:-2], jnp.float32), M,
                             vmap_method="expand_dims")


def attention_stats(attn: jnp.ndarray, query_tok: jnp.ndarray, key_tok: jnp.ndarray,
                    key_mask: jnp.ndarray, query_ok: jnp.ndarray, labels: jnp.ndarray) -> dict:
    """Attention to same-token, same-topic and cross-topic keys, normalised so uniform = 1.

    attn (B, H, L, L); query_tok, key_tok (B, L) token ids; key_mask (B, L) keys of every query
    of a document, or (B, L, L) keys per query (causal prefixes); query_ok (B, L)
    queries to include; labels (n_vocab,) topic per token id, -1 for "no topic". For each query,
    a key's normalised attention is a_ij * (number of keys); averaged over (query, key) pairs of a
    category (same token / same topic other token / other topic), keys without a topic excluded.
    ratio = same_topic / cross_topic (other words only); ratio_all pools identical words into the
    same-topic group, as P1's statistic does.
    Also kl_uniform: mean over queries of KL(a_i || uniform over its keys).
    """
    a = jnp.mean(attn, axis=1)  # heads averaged
    km = key_mask if key_mask.ndim == 3 else key_mask[:, None, :]  # (B, Lq or 1, Lk)
    n_keys = jnp.sum(km, axis=-1, keepdims=True)  # (B, Lq or 1, 1)
    norm = a * n_keys
    qt, kt = labels[query_tok], labels[key_tok]
    q_ok = query_ok & (qt >= 0)
    pair = q_ok[:, :, None] & km & (kt >= 0)[:, None, :]
    same_tok = query_tok[:, :, None] == key_tok[:, None, :]
    same_top = qt[:, :, None] == kt[:, None, :]
    out = {}
    for name, m in (("same_token", pair & same_tok), ("same_topic", pair & same_top & ~same_tok),
                    ("cross_topic", pair & ~same_top)):
        out[name] = jnp.sum(jnp.where(m, norm, 0.0)) / jnp.maximum(jnp.sum(m), 1)
    m_all = pair & same_top  # P1's pooling: identical words count as same-topic pairs
    out["same_topic_all"] = jnp.sum(jnp.where(m_all, norm, 0.0)) / jnp.maximum(jnp.sum(m_all), 1)
    out["ratio"] = out["same_topic"] / jnp.maximum(out["cross_topic"], 1e-12)
    out["ratio_all"] = out["same_topic_all"] / jnp.maximum(out["cross_topic"], 1e-12)
    u = jnp.where(km, 1.0 / jnp.maximum(n_keys, 1), 1.0)
    kl = jnp.sum(jnp.where(km & (a > 0), a * jnp.log(a / u), 0.0), axis=-1)
    out["kl_uniform"] = jnp.sum(jnp.where(q_ok, kl, 0.0)) / jnp.maximum(jnp.sum(q_ok), 1)
    return out
