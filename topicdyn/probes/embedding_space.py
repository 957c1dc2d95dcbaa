"""Embedding-space probes (Singh 2023, EMBEDDING_SPACE.md §3), statistics as pure functions.

P-near (claim S4): at [MASK] queries, where the model sees only the visible words O, how well
its logits over the content words follow the exact posterior predictive log P*(w | O)
(the `bayes/visible` predictor): Pearson and Spearman correlation of the two centred vectors,
averaged over the queries. The Bayes predictor itself gives 1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _pearson(a, b, ok):
    """Row-wise correlation of a, b (R, V) over the entries ok (R, V)."""
    n = jnp.maximum(jnp.sum(ok, -1, keepdims=True), 1)
    ac = jnp.where(ok, a - jnp.sum(jnp.where(ok, a, 0.0), -1, keepdims=True) / n, 0.0)
    bc = jnp.where(ok, b - jnp.sum(jnp.where(ok, b, 0.0), -1, keepdims=True) / n, 0.0)
    den = jnp.sqrt(jnp.sum(ac * ac, -1) * jnp.sum(bc * bc, -1))
    return jnp.sum(ac * bc, -1) / jnp.maximum(den, 1e-30)


def _ranks(a, ok):
    """Average ranks (ties share theirs) of the entries ok of each row; the others are placed
    last and left out by the caller."""
    return jax.vmap(average_ranks)(jnp.where(ok, a, jnp.inf))


def near_stats(logits, ref_logp, rows, V: int) -> dict:
    """{near_pearson, near_spearman}: logits, ref_logp (R, n_vocab) per query row, rows (R,)
    bool: the rows to average ([MASK] queries). Spearman ranks every content word, the
    impossible ones (log P* = -inf, e.g. topics a k-topics document cannot hold) tied at the
    bottom, over the rows where P* is not the same for every word; Pearson uses the possible words of rows where their log P* varies (elsewhere it is
    undefined: such rows are left out of its mean, nan if no row is left)."""
    z, r = logits[:, :V], ref_logp[:, :V]
    ok = jnp.isfinite(r)
    r0 = jnp.where(ok, r, 0.0)
    n_ok = jnp.maximum(jnp.sum(ok, -1, keepdims=True), 1)
    dev = jnp.where(ok, r0 - jnp.sum(r0, -1, keepdims=True) / n_ok, 0.0)
    varies = jnp.sum(dev * dev, -1) > 1e-12
    w = rows.astype(z.dtype)
    wp = w * varies
    out = {"near_pearson": jnp.where(jnp.sum(wp) > 0, jnp.sum(wp * _pearson(z, r0, ok))
                                     / jnp.maximum(jnp.sum(wp), 1.0), jnp.nan)}
    low = jnp.where(ok, r, jnp.min(jnp.where(ok, r, jnp.inf), -1, keepdims=True) - 1.0)
    every = jnp.ones_like(ok)
    out["near_concordance"] = jnp.sum(w * concordance(z, low)) / jnp.maximum(jnp.sum(w), 1.0)
    # a row where P* is the same for every word has no ranking to follow: left out (0/0)
    ws = w * (jnp.max(low, -1) > jnp.min(low, -1))
    out["near_spearman"] = jnp.sum(ws * _pearson(_ranks(z, every), _ranks(low, every),
                                                 every)) / jnp.maximum(jnp.sum(ws), 1.0)
    return out


def concordance(z, r):
    """Per row (R,): among the pairs of content words the reference r (R, V) orders strictly,
    the share the model's logits z (R, V) order the same way (ties in z count one half). Ties
    of the reference (every word of a topic under disjoint uniform topics; every impossible
    word) are left out: only the order the reference has is asked for. Bayes: 1; unrelated: 1/2."""
    def one(zr):  # one row at a time: (V, V) pair tables, not (R, V, V)
        zi, ri = zr
        asked = (ri[:, None] - ri[None, :]) > 0
        dz = zi[:, None] - zi[None, :]
        agree = jnp.where(dz > 0, 1.0, jnp.where(dz == 0, 0.5, 0.0))
        n = jnp.sum(asked)
        return jnp.where(n > 0, jnp.sum(jnp.where(asked, agree, 0.0)) / jnp.maximum(n, 1), 1.0)

    return jax.lax.map(one, (z, r))


def copy_bias(logp, counts, word_topic, T: int):
    """P-copy's copy bias G(O) per context (claim S2): within each topic seen in O, the mean
    log-probability of its words present in O minus that of its words absent from O, averaged
    over the topics that have both. Comparing inside a topic keeps the
    topic's own share out: the Bayes predictor of disjoint uniform topics gives every word of a
    topic the same probability, hence exactly 0; G > 0 is preference for copying a seen token.

    logp (R, V) model log-probabilities over the content words, counts (R, V) the visible
    counts of each word, word_topic (V,) int. Returns (G (R,), informative (R,) bool): G is 0
    and uninformative where no seen topic has both present and absent words (long documents
    see every word of their topics)."""
    onehot = (word_topic[:, None] == jnp.arange(T)[None, :]).astype(logp.dtype)  # (V, T)
    seen = (counts > 0).astype(logp.dtype)
    # words of topics absent from O may be impossible (-inf): they never enter a seen topic's
    # comparison, but 0 * -inf would poison the sums
    logp = jnp.where(jnp.isfinite(logp), logp, 0.0)
    n_in, n_out = seen @ onehot, (1.0 - seen) @ onehot  # (R, T) words present / absent
    s_in, s_out = (logp * seen) @ onehot, (logp * (1.0 - seen)) @ onehot
    both = (n_in > 0) & (n_out > 0)
    g = jnp.where(both, s_in / jnp.maximum(n_in, 1.0) - s_out / jnp.maximum(n_out, 1.0), 0.0)
    k = jnp.sum(both, -1)
    return jnp.where(k > 0, jnp.sum(g, -1) / jnp.maximum(k, 1), 0.0), k > 0


def average_ranks(x):
    """Ranks 0.. of a 1-d array, ties sharing their average rank (Spearman's convention)."""
    s = jnp.sort(x)
    lo = jnp.searchsorted(s, x, side="left")
    hi = jnp.searchsorted(s, x, side="right")
    return (lo + hi - 1).astype(x.dtype) / 2.0


def spearman(a, b):
    """Spearman correlation of two 1-d arrays (average ranks for ties; 0 if one is constant)."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = jnp.sqrt(jnp.sum(ra * ra) * jnp.sum(rb * rb))
    return jnp.where(den > 0, jnp.sum(ra * rb) / jnp.maximum(den, 1e-30), 0.0)


def mean_se(x, w=None):
    """(mean, s.e. of the mean) of the rows x (R,) with 0/1 weights w (R,)."""
    w = jnp.ones_like(x) if w is None else w.astype(x.dtype)
    n = jnp.maximum(jnp.sum(w), 1.0)
    m = jnp.sum(w * x) / n
    var = jnp.sum(w * (x - m) ** 2) / jnp.maximum(n - 1.0, 1.0)
    return m, jnp.sqrt(var / n)


def novel_ratio(logp, a, same_topic_other):
    """P-copy's novel-association ratio B = P(a | O) / mean_{w in topic(a), w != a} P(w | O)
    per context: logp (R, V), a (R,) int, same_topic_other (R, V) bool. Returns (R,)."""
    la = jnp.take_along_axis(logp, a[:, None], -1)[:, 0]
    lo = jnp.where(same_topic_other, logp, -jnp.inf)
    lmean = jax.nn.logsumexp(lo, -1) - jnp.log(jnp.maximum(jnp.sum(same_topic_other, -1), 1))
    return jnp.exp(la - lmean)


def walk_offset(steps):
    """c of the fit s_n ~ C / (n + 1 + c) to the mean step sizes s_n (n = 1.., (n_w,)): the
    least-squares line 1/s_n = (n + 1 + c) / C, so c = intercept / slope - 1 (nan if the steps
    do not shrink)."""
    n = jnp.arange(1, steps.shape[0] + 1, dtype=steps.dtype)
    y = 1.0 / jnp.maximum(steps, 1e-30)
    nc, yc = n - n.mean(), y - y.mean()
    slope = jnp.sum(nc * yc) / jnp.sum(nc * nc)
    icpt = y.mean() - slope * n.mean()
    return jnp.where(slope > 0, icpt / jnp.where(slope > 0, slope, 1.0) - 1.0, jnp.nan)


def spd_solve(A, B, iters: int = 0):
    """A^{-1} B for a symmetric positive-definite A (n, n) by conjugate gradients on each
    column of B (n, m), n iterations (exact in exact arithmetic). Matmuls only: XLA:CPU was
    seen to hang when a LAPACK call shared a program with the probes' large batched ops."""
    n = A.shape[0]
    iters = iters or n

    def body(_, c):
        x, r, p, rs = c
        Ap = A @ p
        a = rs / jnp.maximum(jnp.sum(p * Ap, 0), 1e-30)
        x, r = x + a * p, r - a * Ap
        rs2 = jnp.sum(r * r, 0)
        return x, r, r + (rs2 / jnp.maximum(rs, 1e-30)) * p, rs2

    x0 = jnp.zeros_like(B)
    return jax.lax.fori_loop(0, iters, body, (x0, B, B, jnp.sum(B * B, 0)))[0]


def orthonormal_basis(X, k: int):
    """(n, k) orthonormal basis of the first k columns of X (n, m) by modified Gram-Schmidt
    (columns numerically dependent on earlier ones come out 0)."""
    cols = []
    for j in range(k):
        v = X[:, j]
        for q in cols:
            v = v - jnp.dot(q, v) * q
        nv = jnp.linalg.norm(v)
        cols.append(jnp.where(nv > 1e-6 * jnp.maximum(jnp.linalg.norm(X[:, j]), 1e-30),
                              v / jnp.maximum(nv, 1e-30), 0.0))
    return jnp.stack(cols, 1)


def top_subspace(C, k: int, iters: int = 100):
    """(n, k) orthonormal basis of the top-k eigenspace of a PSD matrix C (n, n), by orthogonal
    iteration from a fixed start (matmuls and Gram-Schmidt only)."""
    n = C.shape[0]
    start = jnp.cos(jnp.arange(n)[:, None] * (jnp.arange(k)[None, :] + 1.0) + 0.5)
    Q = orthonormal_basis(start, k)
    return jax.lax.fori_loop(0, iters, lambda _, Q: orthonormal_basis(C @ Q, k), Q)


def ridge_r2(X_tr, Y_tr, X_te, Y_te, lam: float = 1e-3):
    """Held-out R^2 of a ridge regression (intercept included) from X to Y: 1 - SSE / SST on
    the test rows, summed over the columns of Y."""
    mx, my = X_tr.mean(0), Y_tr.mean(0)
    Xc, Yc = X_tr - mx, Y_tr - my
    scale = jnp.trace(Xc.T @ Xc) / Xc.shape[1] + 1e-12
    W = spd_solve(Xc.T @ Xc + lam * scale * jnp.eye(X_tr.shape[1]), Xc.T @ Yc)
    pred = (X_te - mx) @ W + my
    sse = jnp.sum((Y_te - pred) ** 2)
    sst = jnp.sum((Y_te - Y_te.mean(0)) ** 2)
    return 1.0 - sse / jnp.maximum(sst, 1e-30)


def concept_stats(E, word_topic, T: int, train_mask) -> dict:
    """P-concept on the content rows E (V, d) of an embedding: topic share of the variance,
    held-out accuracy of a linear topic probe (trained on the words train_mask (V,) bool), mean
    cos^2 of the principal angles between the top T-1 principal directions and the centred
    topic indicators, participation ratio of the spectrum."""
    Ec = E - E.mean(0)
    onehot = (word_topic[:, None] == jnp.arange(T)[None, :]).astype(E.dtype)  # (V, T)
    size = jnp.maximum(onehot.sum(0), 1.0)
    mu = (onehot.T @ Ec) / size[:, None]  # (T, d) topic means
    total = jnp.sum(Ec * Ec)
    out = {"concept_topic_var": jnp.sum(size[:, None] * mu * mu) / jnp.maximum(total, 1e-30)}
    Y = onehot - onehot.mean(0)
    w = train_mask.astype(E.dtype)[:, None]
    mx = jnp.sum(w * E, 0) / jnp.sum(w)
    Xc = (E - mx) * w
    scale = jnp.trace(Xc.T @ Xc) / E.shape[1] + 1e-12
    W = spd_solve(Xc.T @ Xc + 1e-3 * scale * jnp.eye(E.shape[1]), Xc.T @ (Y * w))
    pred = jnp.argmax((E - mx) @ W, -1)
    test = ~train_mask
    out["concept_probe_acc"] = jnp.sum(test * (pred == word_topic)) / jnp.maximum(
        jnp.sum(test), 1)
    k = max(T - 1, 1)
    G = Ec @ Ec.T  # (V, V): its eigenvectors are the principal directions over the words
    U = top_subspace(G, k)
    out["concept_angle"] = jnp.sum((U.T @ orthonormal_basis(Y, k)) ** 2) / k
    out["concept_pr"] = jnp.trace(G) ** 2 / jnp.maximum(jnp.sum(G * G), 1e-30)
    return out
