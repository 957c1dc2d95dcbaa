"""The sampler's random-number layer (topicdyn/data.py) against independent references.

* threefry2x32: bit for bit against jax's own Threefry-2x32 (jax.extend.random.threefry_2x32),
  Random123's known-answer vectors, and the relations jax's PRNG keys obey (fold_in, bits);
* random_words / derive_key / key_words: the counter layout they document, and uniformity;
* _mulhi: exact against python integers;
* _log_gamma / dirichlet: moments in closed form and Kolmogorov-Smirnov tests against scipy;
* _topic_and_word / sample_documents: the branches test_data.py does not reach (T > 64, T = 1, a
  general topic-word matrix with many topics), exactly (integer thresholds) and statistically.

Statistical assertions: Z = 5 standard errors or p-values above P_MIN = 1e-6 (a false-alarm rate
per assertion of ~1e-6). Every draw comes from a fixed key, so the tests are deterministic.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

import topicdyn.data as data
from topicdyn.config import DataConfig
from topicdyn.data import (_log_gamma, _mulhi, _topic_and_word, derive_key, dirichlet, key_words,
                           random_words, sample_documents, threefry2x32, topic_word_matrix)

scipy_stats = pytest.importorskip("scipy.stats")
scipy_special = pytest.importorskip("scipy.special")

Z = 5.0
P_MIN = 1e-6
U32 = 2 ** 32
# compile time dominates: classic emitters, no backend optimisation (integer ops are exact either
# way, and float32 arithmetic keeps its IEEE semantics)
FAST = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}


def _jit(f, **kw):
    return jax.jit(f, compiler_options=FAST, **kw)


def _u32(x):
    return jnp.asarray(np.asarray(x, dtype=np.uint32))


def _words(seed, n):
    """n uint32 words from numpy (independent of the code under test)."""
    return np.random.default_rng(seed).integers(0, U32, size=n, dtype=np.uint64).astype(np.uint32)


# ---- threefry ----------------------------------------------------------------------------------

_ours = _jit(lambda k, x0, x1: jnp.stack(threefry2x32(k[0], k[1], x0, x1)))
_theirs = _jit(lambda k, x0, x1: threefry_2x32(k, jnp.concatenate([x0, x1])).reshape(2, -1))

# Random123's known-answer vectors for threefry2x32_20 (also in jax's own tests)
KAT = [((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
       ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
       ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]


@pytest.mark.parametrize("key,ctr,out", KAT)
def test_threefry_known_answers(key, ctr, out):
    got = _ours(_u32(key), _u32([ctr[0]]), _u32([ctr[1]]))
    assert np.asarray(got)[:, 0].tolist() == list(out)


def test_threefry_equals_jax_threefry_bit_for_bit():
    edges = np.array([0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF], np.uint32)
    keys = [np.array(k, np.uint32) for k in
            [(0, 0), (0xFFFFFFFF, 0xFFFFFFFF), (0x1BD11BDA, 0), (0, 0x1BD11BDA)]]
    keys += [_words(s, 2) for s in range(6)]
    x0 = np.concatenate([np.repeat(edges, len(edges)), _words(100, 4000)])
    x1 = np.concatenate([np.tile(edges, len(edges)), _words(101, 4000)])
    for k in keys:
        got = np.asarray(_ours(_u32(k), _u32(x0), _u32(x1)))
        want = np.asarray(_theirs(_u32(k), _u32(x0), _u32(x1)))
        assert got.dtype == np.uint32
        np.testing.assert_array_equal(got, want, err_msg=f"key {k}")


def test_threefry_reproduces_jax_key_derivation():
    """jax's threefry keys: fold_in(key, d) = threefry(key, (0, d)); bits(key, (n,)) as uint32
    = y0 ^ y1 of threefry(key, (0, i)) (the partitionable layout, jax's default)."""
    assert jax.config.jax_threefry_partitionable
    key = jax.random.key(1234)
    kd = np.asarray(jax.random.key_data(key))
    d = np.array([0, 1, 7, 2 ** 31 + 5, U32 - 1], np.uint32)
    y = np.asarray(_ours(_u32(kd), _u32(np.zeros_like(d)), _u32(d)))
    for i, di in enumerate(d):
        folded = np.asarray(jax.random.key_data(jax.random.fold_in(key, int(di))))
        assert folded.tolist() == y[:, i].tolist(), di
    n = 1000
    bits = np.asarray(jax.random.bits(key, (n,), jnp.uint32))
    y = np.asarray(_ours(_u32(kd), _u32(np.zeros(n)), _u32(np.arange(n))))
    np.testing.assert_array_equal(bits, y[0] ^ y[1])


# ---- key words, derived keys, random words -------------------------------------------------------

def test_key_words():
    k = jax.random.PRNGKey(99)  # raw threefry key data
    np.testing.assert_array_equal(np.asarray(key_words(k)), np.asarray(k))
    typed = jax.random.key(99)
    np.testing.assert_array_equal(np.asarray(key_words(typed)), np.asarray(k))
    # another implementation: two words drawn from it (typed, or raw data of another width)
    rbg = jax.random.key(5, impl="rbg")
    want = np.asarray(jax.random.bits(rbg, (2,), jnp.uint32))
    np.testing.assert_array_equal(np.asarray(key_words(rbg)), want)
    assert key_words(rbg).dtype == jnp.uint32 and key_words(rbg).shape == (2,)


def test_derive_key_is_counter_block_1():
    kw = _u32(_words(7, 2))
    i = np.array([0, 1, 2, 12345, U32 - 1], np.uint32)
    want = np.asarray(threefry_2x32(kw, jnp.concatenate([_u32(i), _u32(np.ones(len(i)))])))
    for j, ij in enumerate(i):
        got = np.asarray(derive_key(kw, int(ij)))
        assert got.tolist() == [want[j], want[len(i) + j]]
    assert not np.array_equal(np.asarray(derive_key(kw, 0)), np.asarray(derive_key(kw, 1)))


@pytest.mark.parametrize("shape", [(8,), (7,), (3, 5), (1,)])
def test_random_words_layout(shape):
    """n words = the two output halves of threefry over counters (i, 0), i < ceil(n/2)."""
    kw = _u32(_words(8, 2))
    n = int(np.prod(shape))
    m = (n + 1) // 2
    y = np.asarray(threefry_2x32(kw, jnp.concatenate([_u32(np.arange(m)), _u32(np.zeros(m))])))
    got = np.asarray(_jit(lambda k: random_words(k, shape))(kw))
    assert got.shape == shape and got.dtype == np.uint32
    np.testing.assert_array_equal(got.reshape(-1), y[:n])


def _chi2_p(counts, expected):
    counts = np.asarray(counts, np.float64)
    stat = np.sum((counts - expected) ** 2 / expected)
    return scipy_stats.chi2.sf(stat, counts.size - 1)


def test_random_words_uniform():
    n = 2 ** 18
    r = np.asarray(_jit(lambda k: random_words(k, (n,)))(jax.random.PRNGKey(3)))
    by = r.view(np.uint8)  # 4 n bytes: each uniform on 256 values
    assert _chi2_p(np.bincount(by, minlength=256), len(by) / 256) > P_MIN
    # each byte position separately, and the top 8 bits of the two halves of the output
    for j in range(4):
        assert _chi2_p(np.bincount(by[j::4], minlength=256), n / 256) > P_MIN, j
    for half in (r[: n // 2], r[n // 2:]):
        assert _chi2_p(np.bincount(half >> 24, minlength=256), len(half) / 256) > P_MIN
    # each bit is a fair coin
    bits = (r[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    assert np.all(np.abs(bits.mean(0) - 0.5) < Z * 0.5 / np.sqrt(n))
    # consecutive words independent: their top 4 bits jointly uniform on 256 cells
    pair = (r[:-1:2] >> 28) * 16 + (r[1::2] >> 28)
    assert _chi2_p(np.bincount(pair, minlength=256), len(pair) / 256) > P_MIN
    # different keys give unrelated streams
    r2 = np.asarray(_jit(lambda k: random_words(k, (n,)))(jax.random.PRNGKey(4)))
    assert np.mean(r == r2) < 1e-4


# ---- _mulhi --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 7, 51, 1000, 40503, 65535])
def test_mulhi_exact(n):
    edges = np.array([0, 1, 2, 0xFFFF, 0x10000, 0x10001, 2 ** 31 - 1, 2 ** 31,
                      U32 - 2, U32 - 1], np.uint64)
    r = np.concatenate([edges, _words(n, 20000).astype(np.uint64)])
    want = (r * np.uint64(n)) >> np.uint64(32)  # r n < 2^48: exact in uint64
    got = np.asarray(_jit(lambda x: _mulhi(x, n))(_u32(r)))
    assert got.dtype == np.uint32
    np.testing.assert_array_equal(got.astype(np.uint64), want)
    assert got[0] == 0 and got[len(edges) - 1] == n - 1  # both ends of [0, n)


# ---- Gamma and Dirichlet -------------------------------------------------------------------------

GAMMA_N = 2 ** 17


@functools.lru_cache(maxsize=None)
def _gamma_fn(a, n, candidates):
    # candidates is part of the cache key: _log_gamma reads data._MT_CANDIDATES when traced
    return _jit(lambda k: _log_gamma(key_words(k), a, (n,)))


def _log_gamma_draws(a, seed, candidates=None):
    c = data._MT_CANDIDATES if candidates is None else candidates
    old, data._MT_CANDIDATES = data._MT_CANDIDATES, c
    try:
        return np.asarray(_gamma_fn(a, GAMMA_N, c)(jax.random.PRNGKey(seed)), np.float64)
    finally:
        data._MT_CANDIDATES = old


def _assert_gamma(logx, a, what):
    n = len(logx)
    assert np.all(np.isfinite(logx)), what
    x = np.exp(logx)
    # E X = Var X = a; Var((X - a)^2) = mu4 - a^2 = 2 a^2 + 6 a
    assert abs(x.mean() - a) < Z * np.sqrt(a / n), (what, x.mean())
    v = np.mean((x - a) ** 2)
    assert abs(v - a) < Z * np.sqrt((2 * a * a + 6 * a) / n), (what, v)
    # log X: mean digamma(a), variance trigamma(a) (the small-value tail, where a < 1 lives)
    psi1 = scipy_special.polygamma(1, a)
    assert abs(logx.mean() - scipy_special.digamma(a)) < Z * np.sqrt(psi1 / n), (what, logx.mean())
    psi3 = scipy_special.polygamma(3, a)  # 4th cumulant of log X: Var((L - EL)^2) = k4 + 2 k2^2
    lv = np.mean((logx - scipy_special.digamma(a)) ** 2)
    assert abs(lv - psi1) < Z * np.sqrt((psi3 + 2 * psi1 ** 2) / n), (what, lv, psi1)
    # the whole distribution: KS on log X against log of a Gamma(a) variable (same statistic as
    # on X; n = 2^17 resolves CDF errors down to ~0.007)
    p = scipy_stats.kstest(x, scipy_stats.gamma(a).cdf).pvalue
    assert p > P_MIN, (what, p)
    # neighbouring draws independent
    assert abs(np.corrcoef(logx[:-1], logx[1:])[0, 1]) < Z / np.sqrt(n), what


@pytest.mark.parametrize("a", [0.1, 0.5, 1.0, 3.7])
def test_gamma_draws(a):
    _assert_gamma(_log_gamma_draws(a, 21), a, f"a={a}")


@pytest.mark.parametrize("a", [0.1, 3.7])
def test_gamma_draws_with_many_rejection_rounds(a):
    """One candidate per round instead of four: a few percent of the draws need a second round
    and some a third, so the later rounds (fresh counters, merged by the loop) carry weight."""
    _assert_gamma(_log_gamma_draws(a, 22, candidates=1), a, f"a={a}, 1 candidate")


def test_gamma_is_a_pure_function_of_the_key():
    """Different keys give different draws; the same key the same draws (pure function)."""
    a1, a2, b = (_log_gamma_draws(0.5, s) for s in (31, 31, 32))
    np.testing.assert_array_equal(a1, a2)
    assert np.mean(a1 == b) < 1e-3


@functools.lru_cache(maxsize=None)
def _dirichlet_fn(alpha, n, T):
    return _jit(lambda k: dirichlet(k, alpha, (n,), T))


def test_dirichlet_moments_and_beta_marginal():
    alpha, T, n = 0.1, 10, 2 ** 15
    th = np.asarray(_dirichlet_fn(alpha, n, T)(jax.random.PRNGKey(41)), np.float64)
    assert th.shape == (n, T)
    assert np.all(np.isfinite(th)) and np.all(th >= 0)
    np.testing.assert_allclose(th.sum(1), 1.0, rtol=0, atol=1e-5)
    s = T * alpha
    mean, var = 1 / T, (1 / T) * (1 - 1 / T) / (s + 1)
    assert np.all(np.abs(th.mean(0) - mean) < Z * np.sqrt(var / n)), th.mean(0)
    # variance of each component; theta_t ~ Beta(a, b): Var((theta - mean)^2) from its moments
    a, b = alpha, (T - 1) * alpha
    m = [scipy_stats.beta(a, b).moment(k) for k in range(1, 5)]
    mu4 = m[3] - 4 * m[2] * m[0] + 6 * m[1] * m[0] ** 2 - 3 * m[0] ** 4
    v = ((th - mean) ** 2).mean(0)
    assert np.all(np.abs(v - var) < Z * np.sqrt((mu4 - var ** 2) / n)), (v, var)
    # covariance of two components: -1 / (T^2 (s + 1))
    cov = np.mean((th[:, 0] - mean) * (th[:, 1] - mean))
    prod = (th[:, 0] - mean) * (th[:, 1] - mean)
    assert abs(cov + 1 / (T * T * (s + 1))) < Z * prod.std() / np.sqrt(n), cov
    # the marginal distribution of each component is Beta(alpha, (T - 1) alpha)
    for t in (0, T - 1):
        p = scipy_stats.kstest(th[:, t], scipy_stats.beta(a, b).cdf).pvalue
        assert p > P_MIN, (t, p)


def test_dirichlet_tiny_alpha_stays_finite():
    """alpha = 0.01: Gamma draws ~ exp(-100) would underflow float32 outside log space."""
    th = np.asarray(_dirichlet_fn(0.01, 4096, 10)(jax.random.PRNGKey(42)), np.float64)
    assert np.all(np.isfinite(th)) and np.all(th >= 0)
    np.testing.assert_allclose(th.sum(1), 1.0, rtol=0, atol=1e-5)
    # nearly all mass on one topic: E[max] is close to 1, and the mean is still 1/T
    assert th.max(1).mean() > 0.9
    var = 0.1 * 0.9 / 1.1
    assert np.all(np.abs(th.mean(0) - 0.1) < Z * np.sqrt(var / 4096))


# ---- topic and word of a position ----------------------------------------------------------------

def _dyadic_theta(T, rows, seed):
    """(rows, T) topic proportions that are multiples of 2^-10 (exact in float32, so the CDF
    thresholds are exact integers), with zero entries first, in the middle and last."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(rows):
        w = rng.integers(1, 40, size=T).astype(np.float64)
        w[rng.random(T) < 0.3] = 0
        if i == 0:
            w[0] = 0
        if i == 1:
            w[-3:] = 0
        w[rng.integers(1, T - 1)] = max(w[1], 1)
        c = np.floor(w / w.sum() * 1024)
        c[np.argmax(c)] += 1024 - c.sum()
        out.append(c / 1024)
    return np.asarray(out)


def _reference_topics(r, theta):
    """Exact topic of each word: z = #{t < T-1 : C_t <= r}, C_t = cdf_t 2^32 (integers here),
    thresholds at 2^32 never reached. Also the interval [lo, hi) of r."""
    r = r.astype(np.int64)
    C = np.rint(np.cumsum(theta, axis=1)[:, :-1] * U32).astype(np.int64)  # (B, T-1)
    above = (r[:, :, None] >= C[:, None, :]) & (C[:, None, :] < U32)
    z = above.sum(-1)
    Cfull = np.concatenate([np.zeros((len(C), 1), np.int64), C, np.full((len(C), 1), U32)], 1)
    lo = np.take_along_axis(Cfull, z, axis=1)
    hi = np.take_along_axis(Cfull, z + 1, axis=1)
    return z, lo, hi


L_POS = 2 ** 15


@pytest.mark.parametrize("T", [8, 64, 65, 70])  # 8, 64: unrolled search; 65, 70: the other one
def test_topic_and_word_exact_disjoint(T):
    v = 4
    cfg = DataConfig(T=T, v=v)
    theta = _dyadic_theta(T, 4, T)
    r = _words(T, 4 * L_POS).reshape(4, L_POS)
    z, w = _jit(lambda r, th: _topic_and_word(r, th, cfg))(_u32(r), jnp.asarray(theta, jnp.float32))
    z, w = np.asarray(z), np.asarray(w)
    zr, lo, hi = _reference_topics(r, theta)
    np.testing.assert_array_equal(z, zr)
    assert np.all(np.take_along_axis(theta, z, 1) > 0)  # no zero-probability topic
    # the word: floor((r - lo) v / (hi - lo)), up to float32 rounding at the word edges
    wr = z * v + ((r.astype(np.int64) - lo) * v) // (hi - lo)
    assert np.all(w // v == z)
    assert np.mean(w != wr) < 1e-4, np.mean(w != wr)
    # topic frequencies per row against theta (multinomial chi-square over the support)
    for b in range(4):
        sup = theta[b] > 0
        counts = np.bincount(z[b], minlength=T)
        assert np.all(counts[~sup] == 0)
        assert _chi2_p(counts[sup], L_POS * theta[b][sup]) > P_MIN, b
    # within a topic the v words are uniform (pooled over topics)
    assert _chi2_p(np.bincount(w.reshape(-1) % v, minlength=v), w.size / v) > P_MIN


def _explicit_beta(T, V, seed):
    rng = np.random.default_rng(seed)
    b = rng.random((T, V)) * (rng.random((T, V)) < 0.5)
    b[np.arange(T), rng.integers(0, V, T)] += 0.5  # every row has support
    b /= b.sum(1, keepdims=True)
    return tuple(tuple(float(x) for x in row) for row in b)


@pytest.mark.parametrize("T", [5, 66])  # unrolled, and the other topic search
def test_topic_and_word_general_matrix(T):
    """topic_words=explicit: given its topic z the word is Cat(beta_z) (inverse CDF of the
    fresh uniform (r - lo) / (hi - lo)), checked exactly up to float32 edges and by chi-square."""
    V = 12
    cfg = DataConfig(T=T, topic_words="explicit", beta=_explicit_beta(T, V, T))
    beta = topic_word_matrix(cfg)
    theta = _dyadic_theta(T, 4, T + 1)
    r = _words(T + 1, 4 * L_POS).reshape(4, L_POS)
    z, w = _jit(lambda r, th: _topic_and_word(r, th, cfg))(_u32(r), jnp.asarray(theta, jnp.float32))
    z, w = np.asarray(z), np.asarray(w)
    zr, lo, hi = _reference_topics(r, theta)
    np.testing.assert_array_equal(z, zr)
    f = (r.astype(np.int64) - lo) / (hi - lo)
    cdf = np.cumsum(beta, axis=1)
    wr = np.minimum(np.sum(f[..., None] >= cdf[z], axis=-1), V - 1)  # searchsorted, per row
    assert np.mean(w != wr) < 1e-4, np.mean(w != wr)
    assert np.all(beta[z, w] > 0), "a word outside its topic's support"
    # chi-square of the (topic, word) table against n_z beta_z over the support
    table = np.zeros((T, V))
    np.add.at(table, (z.reshape(-1), w.reshape(-1)), 1)
    nz = table.sum(1)
    ok = (beta > 0) & (nz[:, None] > 0)
    expected = nz[:, None] * beta
    stat = np.sum((table[ok] - expected[ok]) ** 2 / expected[ok])
    dof = ok.sum() - (nz > 0).sum()
    assert scipy_stats.chi2.sf(stat, dof) > P_MIN


@pytest.mark.parametrize("words", ["disjoint", "explicit"])
def test_topic_and_word_single_topic(words):
    beta = ((0.1, 0.0, 0.6, 0.3),)
    cfg = (DataConfig(T=1, v=5, k=1) if words == "disjoint" else
           DataConfig(T=1, topic_words="explicit", beta=beta, k=1))
    p = topic_word_matrix(cfg)[0]
    r = _words(5, 2 * L_POS).reshape(2, L_POS)
    z, w = _jit(lambda r: _topic_and_word(r, jnp.ones((2, 1), jnp.float32), cfg))(_u32(r))
    z, w = np.asarray(z), np.asarray(w)
    assert np.all(z == 0)
    # the word from the top 24 bits of r: floor(u v) or the inverse CDF of u = (r >> 8) 2^-24
    u = (r >> 8) / 2.0 ** 24
    wr = np.minimum(np.searchsorted(np.cumsum(p), u, side="right"), len(p) - 1)
    assert np.mean(w != wr) < 1e-4
    counts = np.bincount(w.reshape(-1), minlength=len(p))
    assert len(counts) == len(p) and np.all(counts[p == 0] == 0)
    assert _chi2_p(counts[p > 0], w.size * p[p > 0]) > P_MIN


# ---- whole documents in those branches -----------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _docs_fn(cfg, batch):
    return _jit(lambda k: sample_documents(k, cfg, batch))


def test_sample_documents_many_topics():
    """T = 70 > 64 topics, Dirichlet prior: topic counts follow theta, words their topic."""
    cfg = DataConfig(T=70, v=2, alpha=0.5, N_min=40, N_max=60, start_end=False)
    d = jax.device_get(_docs_fn(cfg, 400)(jax.random.PRNGKey(51)))
    th = np.asarray(d.theta, np.float64)
    np.testing.assert_allclose(th.sum(1), 1.0, rtol=0, atol=1e-5)
    content = np.asarray(d.content)
    top, tok = np.asarray(d.topics), np.asarray(d.tokens)
    assert np.all(tok[content] // cfg.v == top[content])
    N = np.asarray(d.length).astype(np.float64)
    n = np.stack([(top == t).sum(1) for t in range(cfg.T)], 1)
    # E[n_bt | theta, N] = N theta_bt, Var = N theta (1 - theta); summed over documents
    resid = (n - N[:, None] * th).sum(0)
    se = np.sqrt((N[:, None] * th * (1 - th)).sum(0))
    assert np.all(np.abs(resid) < Z * se), (resid / se).round(2)
    # a single standardised statistic over all topics: sum of squares ~ chi2(T)
    assert scipy_stats.chi2.sf(np.sum((resid / se) ** 2), cfg.T) > P_MIN
    # within a topic both words equally likely
    w = tok[content] % cfg.v
    assert abs(w.mean() - 0.5) < Z * 0.5 / np.sqrt(w.size)


def test_sample_documents_single_topic():
    cfg = DataConfig(T=1, v=6, k=1, N_min=5, N_max=9)
    d = jax.device_get(_docs_fn(cfg, 2000)(jax.random.PRNGKey(52)))
    np.testing.assert_array_equal(np.asarray(d.theta), 1.0)
    content = np.asarray(d.content)
    assert np.all(np.asarray(d.topics)[content] == 0)
    w = np.asarray(d.tokens)[content]
    counts = np.bincount(w, minlength=cfg.v)
    assert len(counts) == cfg.v
    assert _chi2_p(counts, w.size / cfg.v) > P_MIN
