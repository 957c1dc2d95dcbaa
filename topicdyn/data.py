"""On-device LDA document sampler (BRIEF §2).

`sample_documents(key, cfg)` is pure and jittable: the batch at training step t is a function of
(seed, t) only. Layout of a row (start_end=True): [START, w_1 .. w_N, END, PAD ...], length
N_max + 2. Token ids: content words 0..V-1, then [MASK], START, END, PAD (see DataConfig).
"""
from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.config import DataConfig


class Documents(NamedTuple):
    """A batch of clean documents with their ground truth. B = batch, L = seq_len, T = topics."""

    tokens: jax.Array  # (B, L) int32
    valid: jax.Array  # (B, L) bool: not PAD
    content: jax.Array  # (B, L) bool: a content word (not START/END/PAD)
    topics: jax.Array  # (B, L) int32: topic that generated the word, -1 elsewhere
    theta: jax.Array  # (B, T) float32: the document's topic proportions
    length: jax.Array  # (B,) int32: number of content words N


def topic_word_matrix(cfg: DataConfig) -> np.ndarray:
    """beta, shape (T, V): row t is the word distribution of topic t (float64, numpy)."""
    if cfg.source == "corpus":
        raise NotImplementedError("real text (data.source=corpus) has no generating topic-word "
                                  "matrix; its LDA fit is topicdyn.corpus.lda.corpus_lda")
    T, v, V = cfg.T, cfg.v, cfg.V
    beta = np.zeros((T, V))
    if cfg.topic_words == "explicit":
        beta = np.asarray(cfg.beta, dtype=np.float64)
        return beta / beta.sum(1, keepdims=True)
    if cfg.topic_words == "overlap":
        step = v - cfg.overlap
        for t in range(T):
            beta[t, t * step: t * step + v] = 1.0 / v
        return beta
    w = np.ones(v) if cfg.topic_words == "disjoint" else 1.0 / np.arange(1, v + 1) ** cfg.zipf_s
    for t in range(T):
        beta[t, t * v:(t + 1) * v] = w / w.sum()
    return beta


def word_topic(cfg: DataConfig) -> np.ndarray:
    """(V,) int: the topic that owns each word (for overlapping topics: the first one)."""
    return np.argmax(topic_word_matrix(cfg) > 0, axis=0)


def topic_labels(cfg: DataConfig) -> np.ndarray:
    """(V,) int: the topic each word is counted under by the probes, -1 for none: the LDA
    labels of a corpus (topicdyn.corpus), data.labels where given, else word_topic."""
    if cfg.source == "corpus":
        from topicdyn.corpus.lda import corpus_lda
        return corpus_lda(cfg).labels
    if cfg.labels is not None:
        return np.asarray(cfg.labels, dtype=np.int64)
    return word_topic(cfg)


def eval_data(cfg: DataConfig) -> DataConfig:
    """The data config of evaluation documents: a corpus's held-out articles (the evaluation
    set and the population estimate never see a training article), else cfg itself."""
    if cfg.source == "corpus":
        import dataclasses
        return dataclasses.replace(cfg, split="heldout")
    return cfg


def unigram(cfg: DataConfig) -> np.ndarray:
    """(V,) marginal word distribution: beta averaged over topics (the symmetric prior's
    E[theta_t] = 1/T), or a corpus's training-split word frequencies."""
    if cfg.source == "corpus":
        from topicdyn.corpus.text import load_corpus
        c = load_corpus(cfg).counts.astype(np.float64)
        return c / c.sum()
    return topic_word_matrix(cfg).mean(0)


def _categorical_icdf(u: jax.Array, cdf: jax.Array) -> jax.Array:
    """Inverse-CDF draw: u (...,) in [0,1), cdf (..., K) increasing -> index in [0, K)."""
    u = u * cdf[..., -1]  # rescale so float32 round-off in cdf[-1] can never overflow the range
    idx = jnp.sum((u[..., None] >= cdf).astype(jnp.int32), axis=-1)
    return jnp.minimum(idx, cdf.shape[-1] - 1)


def _categorical_icdf_rows(u: jax.Array, table: jax.Array, rows: jax.Array) -> jax.Array:
    """_categorical_icdf(u, table[rows]) without materialising table[rows] (..., K): a binary
    search for the count of CDF entries <= u (the same index, the rows being non-decreasing),
    ceil(log2(K + 1)) gathers instead of K compares per draw. u (...,), table (R, K), rows
    (...,) int."""
    K = table.shape[1]
    u = u * table[rows, K - 1]
    lo = jnp.zeros(u.shape, jnp.int32)
    hi = jnp.full(u.shape, K, jnp.int32)
    for _ in range(max(1, math.ceil(math.log2(K + 1)))):
        mid = (lo + hi) // 2
        active = lo < hi
        right = active & (table[rows, jnp.minimum(mid, K - 1)] <= u)
        lo = jnp.where(right, mid + 1, lo)
        hi = jnp.where(active & ~right, mid, hi)
    return jnp.minimum(lo, K - 1)


_SEARCH_FROM = 128  # words per topic CDF above which a draw searches instead of comparing all


def _uniform_int(u: jax.Array, n: int) -> jax.Array:
    """Map u in [0, 1) to a uniform integer in [0, n)."""
    return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


# ---- random words --------------------------------------------------------------------------
# Random words are the sampler's main cost on CPU, and jax.random lowers threefry there as a rolled
# loop (small fused kernels, one loop per call). The sampler therefore hashes its counters with an
# unrolled Threefry-2x32 (the same function, checked bit for bit against jax's in the tests) that
# fuses into one kernel and yields two words per call, and every per-position choice is taken
# from as few uint32 words as exactness allows: integer thresholds are exact to 2^-32, and a choice
# inside an interval of W integers reuses the word's offset in it (uniform on those W integers).
# Counter blocks: (i, 0) for random words, (i, 1) for derived keys, (i, 2) for rejection-sampler
# rounds, so they never meet.

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k0, k1, x0, x1):
    """Threefry-2x32 (20 rounds) of the counter pairs (x0, x1) under the key (k0, k1), unrolled.
    All uint32; returns the two output words. Same function as jax's threefry_2x32."""
    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
    x0, x1 = x0 + k0, x1 + k1
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r)))
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def key_words(key: jax.Array) -> jax.Array:
    """(2,) uint32 words of a PRNG key: a threefry key's own data (raw or typed); for any other
    implementation, two words drawn from it."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if jax.random.key_impl(key) == "threefry2x32":
            return jax.random.key_data(key)
        return jax.random.bits(key, (2,), jnp.uint32)
    if key.shape[-1] == 2:
        return key.astype(jnp.uint32)
    return jax.random.bits(jax.random.wrap_key_data(key), (2,), jnp.uint32)


def derive_key(kw: jax.Array, i) -> jax.Array:
    """The i-th (2,) key derived from the key words kw (i: int or traced uint32 scalar)."""
    y0, y1 = threefry2x32(kw[0], kw[1], jnp.asarray(i, jnp.uint32), jnp.uint32(1))
    return jnp.stack([y0, y1])


def random_words(kw: jax.Array, shape) -> jax.Array:
    """iid uniform uint32 words of the given shape from the key words kw."""
    n = math.prod(shape)
    m = (n + 1) // 2
    y0, y1 = threefry2x32(kw[0], kw[1], jnp.arange(m, dtype=jnp.uint32), jnp.uint32(0))
    return jax.lax.optimization_barrier(jnp.concatenate([y0, y1])[:n].reshape(shape))


def _mulhi(r: jax.Array, n: int) -> jax.Array:
    """floor(r * n / 2^32) for uint32 r and 0 < n < 2^16, exactly, in 32-bit arithmetic: a
    uniform integer in [0, n) with bias at most n / 2^32."""
    n = jnp.uint32(n)
    return ((r >> 16) * n + (((r & 0xFFFF) * n) >> 16)) >> 16


def uniform_below(r: jax.Array, n: int) -> jax.Array:
    """int32 uniform integers in [0, n) from uint32 words r (0 < n <= 2^16; see _mulhi)."""
    return _mulhi(r, n).astype(jnp.int32)


def _threshold(p: float) -> int:
    """Integer threshold of an event of probability p for a uint32 word: P(r < t) = t / 2^32."""
    return int(round(min(max(p, 0.0), 1.0) * 2.0 ** 32))


def _below(r: jax.Array, t: int) -> jax.Array:
    """r < t for a python threshold t in [0, 2^32] (t = 2^32: always)."""
    if t >= 2 ** 32:
        return jnp.ones(r.shape, bool)
    return r < jnp.uint32(t)


# Gamma draws by rejection, as numpy does: Ahrens & Dieter's GS algorithm for a < 1 (acceptance
# > 0.88; only uniforms and logs), Marsaglia & Tsang (2000) for a >= 1 (acceptance > 0.95). Each
# element gets _MT_CANDIDATES proposals per round and keeps the first accepted one; rounds repeat
# (a loop) until every element has one, which after the first round happens for a fraction
# ~1e-5 (a = 0.1) to ~1e-4 of them. That is the sequential algorithm, vectorised: the draws are
# exactly Gamma distributed. (jax.random.gamma runs a loop per element with key splits inside:
# it dominated the training step on CPU.)
_MT_CANDIDATES = 4


def _open_unit(r: jax.Array) -> jax.Array:
    """uint32 -> float32 uniform in (0, 1): 23 random bits, so that the largest value,
    1 - 2^-24, is still a float32 below 1 (with 24 bits it would round to 1)."""
    return ((r >> 9).astype(jnp.float32) + 0.5) * jnp.float32(2.0 ** -23)


def _normal(r: jax.Array) -> jax.Array:
    """uint32 words -> standard normal float32 by inverse CDF (as jax.random.normal does)."""
    return jnp.float32(math.sqrt(2.0)) * jax.lax.erf_inv(2.0 * _open_unit(r) - 1.0)


def gamma_words(shape) -> int:
    """Random words the first round of _log_gamma reads for `shape` draws."""
    return 2 * _MT_CANDIDATES * math.prod(shape)


def _log_gamma(kw: jax.Array, a: float, shape) -> jax.Array:
    """log of iid Gamma(a, 1) draws, float32, shape `shape`; a > 0 a python float. In log space
    throughout, so that tiny a cannot underflow (as jax.random.dirichlet does). Round i reads
    its words from kw's counter block 2."""
    shape = tuple(shape)
    M = _MT_CANDIDATES

    if a < 1.0:
        def proposals(r):  # GS: X = U^(1/a) if U <= 1 - a, else (1 - a + a Y)^(1/a) with
            u, u2 = _open_unit(r[0]), _open_unit(r[1])  # Y = -log((1 - U) / a)
            low = u <= 1.0 - a
            y = -jnp.log((1.0 - u) / a)
            logx = jnp.log(jnp.where(low, u, 1.0 - a + a * jnp.maximum(y, 0.0))) / a
            # accept iff X <= V (low) or X <= V + Y, V = -log(U2) ~ Exp(1); i.e.
            # U2 <= exp(-X) (low) or U2 <= exp(Y - X) = exp(-X) a / (1 - U)
            ok = u2 <= jnp.exp(-jnp.exp(logx)) * jnp.where(low, 1.0, a / (1.0 - u))
            return ok, logx
    else:
        d = a - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)

        def proposals(r):  # Marsaglia-Tsang: d v^3 for x ~ N(0, 1), v = 1 + c x > 0
            x, u = _normal(r[0]), _open_unit(r[1])
            v = (1.0 + c * x) ** 3
            pos = v > 0
            logv = jnp.log(jnp.where(pos, v, 1.0))
            ok = pos & ((u < 1.0 - 0.0331 * x ** 4) |
                        (jnp.log(u) < 0.5 * x * x + d * (1.0 - v + logv)))
            return ok, math.log(d) + logv

    def round_(carry):  # round i: proposals for the elements without an accepted one yet
        i, got, val = carry
        r = _round_words(kw, i, gamma_words(shape))
        ok, logx = proposals(r.reshape((2, M) + shape))
        # the first accepted proposal, as reductions over the proposal axis (slicing it would
        # have XLA fuse M copies of the proposal code: seconds of compile time)
        m = jnp.arange(M, dtype=jnp.int32).reshape((M,) + (1,) * len(shape))
        first = jnp.min(jnp.where(ok, m, M), axis=0)
        new = jnp.sum(jnp.where(m == first[None], logx, 0.0), axis=0)
        return i + 1, got | (first < M), jnp.where(got, val, new)

    # one loop for every round (the first always runs): a single copy of the sampler to compile
    carry = (jnp.uint32(0), jnp.zeros(shape, bool), jnp.zeros(shape, jnp.float32))
    return jax.lax.while_loop(lambda c: ~jnp.all(c[1]), round_, carry)[2]


def _round_words(kw: jax.Array, i, n: int) -> jax.Array:
    """n random words for round i of a rejection sampler: counter block (i n / 2 + j, 2)."""
    m = (n + 1) // 2
    x0 = jnp.asarray(i, jnp.uint32) * jnp.uint32(m) + jnp.arange(m, dtype=jnp.uint32)
    y0, y1 = threefry2x32(kw[0], kw[1], x0, jnp.uint32(2))
    return jnp.concatenate([y0, y1])[:n]


def dirichlet(key: jax.Array, alpha: float, shape, k: int) -> jax.Array:
    """Symmetric Dirichlet(alpha * 1_k) draws of shape shape + (k,): normalised Gamma(alpha)."""
    g = _log_gamma(key_words(key), float(alpha), tuple(shape) + (k,))
    return jax.nn.softmax(g, axis=-1)


def sample_theta(key: jax.Array, cfg: DataConfig, batch: int) -> jax.Array:
    """(batch, T) topic proportions from the configured prior."""
    T = cfg.T
    kw = key_words(key)
    if cfg.prior == "dirichlet":
        return dirichlet(kw, cfg.alpha, (batch,), T)
    k_sub, k_w = derive_key(kw, 0), derive_key(kw, 1)
    # uniform random subset of size k: the k smallest of T iid words (ties: probability ~2^-32)
    ranks = jnp.argsort(jnp.argsort(random_words(k_sub, (batch, T)), axis=1), axis=1)
    chosen = ranks < cfg.k
    if cfg.k_weights == "equal":
        w = jnp.full((batch, cfg.k), 1.0 / cfg.k)
    else:
        w = dirichlet(k_w, cfg.alpha, (batch,), cfg.k)
    # place the k weights on the chosen topics in rank order
    slot = jnp.where(chosen, ranks, 0)
    return jnp.where(chosen, jnp.take_along_axis(w, slot, axis=1), 0.0)


_UNROLL_TOPICS = 64  # up to this many topics the topic search is unrolled over thresholds


def _topic_and_word(r: jax.Array, theta: jax.Array, cfg: DataConfig):
    """One uint32 word per position -> (topic z, word), both int32 of r's shape (B, L).

    z: the interval of the topic CDF (scaled to 2^32, thresholds C_0 < ... < C_{T-2}) holding r.
    Given z, r - C_{z-1} is uniform on the interval's W integers, so f = (r - C_{z-1}) / W is a
    fresh uniform in [0, 1) that picks the word inside the topic: floor(f v) for disjoint uniform
    topics, an inverse-CDF draw on beta_z otherwise. Error in total variation <= T V / 2^32 from
    the integer grid, plus float32 round-off at interval edges (the precision of theta itself).
    """
    T = cfg.T
    cdf = jnp.cumsum(theta, axis=1)
    cdf = cdf / cdf[:, -1:]  # exact sum 1 up to round-off
    if T == 1:
        z = jnp.zeros(r.shape, jnp.int32)
        f = (r >> 8).astype(jnp.float32) * jnp.float32(2.0 ** -24)
    else:
        # integer thresholds C_t = floor(cdf_t 2^32), held exactly in float32 and uint32; a
        # threshold at 2^32 (the CDF already 1: later topics have theta 0) is never reached
        top = jnp.float32(2.0 ** 32)
        c = jnp.minimum(jnp.floor(cdf[:, :-1] * top), top)  # (B, T-1), non-decreasing
        reachable = c < top
        cu = jnp.where(reachable, c, 0.0).astype(jnp.uint32)
        if T <= _UNROLL_TOPICS:
            # elementwise over (B, L), one threshold at a time: fuses into a single loop
            z = jnp.zeros(r.shape, jnp.int32)
            lo = jnp.zeros(r.shape, jnp.float32)
            hi = jnp.full(r.shape, top)
            for t in range(T - 1):
                above = (r >= cu[:, t:t + 1]) & reachable[:, t:t + 1]
                z = z + above.astype(jnp.int32)
                lo = jnp.where(above, c[:, t:t + 1], lo)  # the last threshold passed
            for t in reversed(range(T - 1)):
                hi = jnp.where((r >= cu[:, t:t + 1]) & reachable[:, t:t + 1], hi, c[:, t:t + 1])
        else:
            above = (r[..., None] >= cu[:, None, :]) & reachable[:, None, :]  # (B, L, T-1)
            z = jnp.sum(above.astype(jnp.int32), axis=-1)
            lo = jnp.max(jnp.where(above, c[:, None, :], 0.0), axis=-1)
            hi = jnp.min(jnp.where(above, top, c[:, None, :]), axis=-1)
        off = (r - lo.astype(jnp.uint32)).astype(jnp.float32)
        f = off / jnp.maximum(hi - lo, 1.0)
    if cfg.topic_words == "disjoint":
        words = z * cfg.v + jnp.minimum(jnp.floor(f * cfg.v).astype(jnp.int32), cfg.v - 1)
    else:
        cdf_w = jnp.asarray(np.cumsum(topic_word_matrix(cfg), axis=1), jnp.float32)
        if cfg.V > _SEARCH_FROM:
            words = _categorical_icdf_rows(f, cdf_w, z)
        else:
            words = _categorical_icdf(f, cdf_w[z])
    return z.astype(jnp.int32), words.astype(jnp.int32)


def document_words(cfg: DataConfig, batch: int) -> int:
    """Random words one batch of documents reads: one per position and one per length (theta
    draws its own, documents_from_words)."""
    return batch * cfg.seq_len + batch


def sample_documents(key: jax.Array, cfg: DataConfig, batch: int | None = None) -> Documents:
    """Sample `batch` (default cfg.batch_size) LDA documents; see module doc for the layout.

    Words are iid given theta, so every position of the row draws its own (topic, word) from one
    random word and the content mask keeps positions 1..N: no gather into the layout. Jitted
    (config static), so an eager call runs one compiled program."""
    return _sample_documents(key, cfg, batch)


@partial(jax.jit, static_argnums=(1, 2))
def _sample_documents(key: jax.Array, cfg: DataConfig, batch: int | None) -> Documents:
    B = cfg.batch_size if batch is None else batch
    kw = key_words(key)
    return documents_from_words(kw, random_words(kw, (document_words(cfg, B),)), cfg, B)


def documents_from_words(kw: jax.Array, r: jax.Array, cfg: DataConfig, B: int) -> Documents:
    """Documents from document_words(cfg, B) random words r (one threefry kernel for the whole
    batch: each separate one costs ~0.3 s of compile time); kw seeds the rare extra rounds of
    theta (its rejection sampler draws in rounds from its own counter block)."""
    if cfg.source == "corpus":
        from topicdyn.corpus.windows import window_documents
        return window_documents(r, cfg, B)
    L, off = cfg.seq_len, (1 if cfg.start_end else 0)
    theta = sample_theta(derive_key(kw, 0), cfg, B)
    length = cfg.N_min + _mulhi(r[B * L:B * L + B], cfg.N_max - cfg.N_min + 1).astype(jnp.int32)
    z, words = _topic_and_word(r[:B * L].reshape(B, L), theta, cfg)  # one word per position
    pos = jnp.arange(L)[None, :]
    content = (pos >= off) & (pos < off + length[:, None])
    tokens = jnp.where(content, words, cfg.PAD)
    if cfg.start_end:
        tokens = jnp.where(pos == 0, cfg.START, tokens)
        tokens = jnp.where(pos == length[:, None] + 1, cfg.END, tokens)
    valid = tokens != cfg.PAD
    topics = jnp.where(content, z, -1)
    return Documents(tokens.astype(jnp.int32), valid, content, topics, theta,
                     length.astype(jnp.int32))
