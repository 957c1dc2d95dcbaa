"""LDA sampler: layout and statistics against closed forms over large batches.

Statistical assertions are stated in standard errors (Z = 5). Every batch comes from a fixed key, so
the tests are deterministic; 5 standard errors leaves a per-assertion false-alarm rate of ~6e-7.
Each configuration below is compiled once (module-scoped batches) to keep the runtime small.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import BIG_BATCH, sample_docs_jit
from topicdyn.config import N_SPECIALS, DataConfig
from topicdyn.data import sample_documents, topic_word_matrix, word_topic

Z = 5.0  # tolerance in standard errors

# small documents, no START/END (k_topics/equal prior: no Dirichlet sampler to compile)
SMALL = DataConfig(T=3, v=4, N_min=5, N_max=9, prior="k_topics", k=2, k_weights="equal",
                   start_end=False)
SMALL_BATCH = 500
# zipf topics, k_topics prior with Dirichlet(1) weights over k=3 of T=5 topics
ZIPF_S = 1.3
ZIPF = DataConfig(T=5, v=8, topic_words="zipf", zipf_s=ZIPF_S, prior="k_topics", k=3,
                  k_weights="dirichlet", alpha=1.0, N_min=20, N_max=40)
# overlapping topics, k_topics prior with equal weights over k=2 of T=4 topics
OVERLAP = DataConfig(T=4, v=5, topic_words="overlap", overlap=2, prior="k_topics", k=2,
                     k_weights="equal", N_min=30, N_max=50)
# an explicit topic-word matrix; every document mixes all three topics equally
BETA = ((0.5, 0.3, 0.2, 0.0, 0.0, 0.0),
        (0.0, 0.0, 0.1, 0.1, 0.8, 0.0),
        (0.25, 0.25, 0.0, 0.0, 0.0, 0.5))
EXPLICIT = DataConfig(T=3, topic_words="explicit", beta=BETA, prior="k_topics", k=3,
                      k_weights="equal", N_min=20, N_max=40)


def _docs(cfg: DataConfig, seed: int = 0, batch: int = BIG_BATCH):
    return jax.device_get(sample_docs_jit(jax.random.PRNGKey(seed), cfg, batch))


@pytest.fixture(scope="module")
def zipf_docs():
    return _docs(ZIPF)


@pytest.fixture(scope="module")
def overlap_docs():
    return _docs(OVERLAP)


@pytest.fixture(scope="module")
def explicit_docs():
    return _docs(EXPLICIT)


@pytest.fixture(scope="module")
def small_docs():
    return _docs(SMALL, batch=SMALL_BATCH)


def _content_pairs(docs):
    """Flat arrays (word, topic) over all content positions."""
    c = np.asarray(docs.content)
    return np.asarray(docs.tokens)[c], np.asarray(docs.topics)[c]


def _topic_counts(docs, T):
    top = np.asarray(docs.topics)
    return np.stack([(top == t).sum(1) for t in range(T)], 1)  # (B, T)


def _assert_within_topic_freqs(words, topics, beta):
    """Given the generating topic, words are iid Cat(beta[t]): binomial standard errors."""
    T, V = beta.shape
    for t in range(T):
        w = words[topics == t]
        n = len(w)
        assert n > 1000, f"too few tokens of topic {t} to test: {n}"
        freq = np.bincount(w, minlength=V)[:V] / n
        assert len(np.bincount(w)) <= V, "a content position holds a non-content id"
        assert np.all(freq[beta[t] == 0] == 0), f"topic {t} emitted a word outside its support"
        p = beta[t]
        sup = p > 0
        z = np.abs(freq[sup] - p[sup]) / np.sqrt(p[sup] * (1 - p[sup]) / n)
        assert z.max() < Z, (t, freq, p, z.max())


def _assert_mean_within(x, expected, what):
    x = np.asarray(x, np.float64)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert abs(x.mean() - expected) < Z * se, (what, x.mean(), expected, se)


def _pair_share(docs, T):
    """Per-document unbiased estimate of P(two distinct content tokens share a topic)."""
    n = _topic_counts(docs, T).astype(np.float64)
    N = n.sum(1)
    assert np.array_equal(N, np.asarray(docs.length))
    return ((n ** 2).sum(1) - N) / (N * (N - 1))


# ---- layout ------------------------------------------------------------------------------------

def test_lengths_uniform_with_closed_form_mean(default_docs, default_data_cfg):
    cfg = default_data_cfg
    N = np.asarray(default_docs.length)
    assert N.shape == (BIG_BATCH,)
    assert N.min() >= cfg.N_min and N.max() <= cfg.N_max
    # uniform on the integers [N_min, N_max]: mean (N_min+N_max)/2, var (n^2-1)/12
    n_vals = cfg.N_max - cfg.N_min + 1
    mean = (cfg.N_min + cfg.N_max) / 2
    sd = np.sqrt((n_vals ** 2 - 1) / 12)
    assert abs(N.mean() - mean) < Z * sd / np.sqrt(BIG_BATCH), (N.mean(), mean)
    # every value equally likely (each count binomial(B, 1/n_vals)); both ends are reachable
    counts = np.bincount(N - cfg.N_min, minlength=n_vals)
    p = 1 / n_vals
    assert np.abs(counts - BIG_BATCH * p).max() < Z * np.sqrt(BIG_BATCH * p * (1 - p))
    assert counts[0] > 0 and counts[-1] > 0


def test_layout_with_start_end(default_docs, default_data_cfg):
    cfg = default_data_cfg
    tok = np.asarray(default_docs.tokens)
    B, L = tok.shape
    assert L == cfg.N_max + 2 and B == BIG_BATCH
    assert tok.dtype == np.int32
    N = np.asarray(default_docs.length)[:, None]
    pos = np.arange(L)[None, :]
    V = cfg.T * cfg.v
    assert (cfg.MASK, cfg.START, cfg.END, cfg.PAD) == (V, V + 1, V + 2, V + 3)
    exp_content = (pos >= 1) & (pos <= N)
    assert np.all(tok[:, 0] == V + 1)  # START
    assert np.all(tok[np.arange(B), N[:, 0] + 1] == V + 2)  # END right after the last word
    assert np.all(tok[pos > N + 1] == V + 3)  # PAD after END
    assert np.all((tok[exp_content] >= 0) & (tok[exp_content] < V))
    assert np.array_equal(np.asarray(default_docs.content), exp_content)
    assert np.array_equal(np.asarray(default_docs.valid), pos <= N + 1)
    top = np.asarray(default_docs.topics)
    assert np.all(top[~exp_content] == -1)
    assert np.all((top[exp_content] >= 0) & (top[exp_content] < cfg.T))
    assert not np.any(tok == V)  # no MASK in clean documents
    assert np.all((tok == V + 1).sum(1) == 1) and np.all((tok == V + 2).sum(1) == 1)


def test_layout_without_start_end(small_docs):
    cfg = SMALL
    tok = np.asarray(small_docs.tokens)
    B, L = tok.shape
    assert (B, L) == (SMALL_BATCH, cfg.N_max)
    N = np.asarray(small_docs.length)[:, None]
    assert N.min() == cfg.N_min and N.max() == cfg.N_max
    pos = np.arange(L)[None, :]
    V = cfg.T * cfg.v
    exp_content = pos < N
    assert np.all((tok[exp_content] >= 0) & (tok[exp_content] < V))
    assert np.all(tok[~exp_content] == V + 3)  # PAD
    assert not np.any(np.isin(tok, [V, V + 1, V + 2]))  # no MASK/START/END
    assert np.array_equal(np.asarray(small_docs.content), exp_content)
    assert np.array_equal(np.asarray(small_docs.valid), exp_content)
    top = np.asarray(small_docs.topics)
    assert np.all(top[~exp_content] == -1)
    assert np.array_equal(tok[exp_content] // cfg.v, top[exp_content])


# ---- word distributions -------------------------------------------------------------------------

def test_disjoint_uniform_word_frequencies(default_docs, default_data_cfg):
    cfg = default_data_cfg
    V, v = cfg.T * cfg.v, cfg.v
    words, topics = _content_pairs(default_docs)
    # the generating topic owns the word: word // v == topic
    assert np.array_equal(words // v, topics)
    # within a topic each of its v words has probability 1/v
    beta = np.zeros((cfg.T, V))
    for t in range(cfg.T):
        beta[t, t * v:(t + 1) * v] = 1 / v
    _assert_within_topic_freqs(words, topics, beta)
    # marginally each word has probability 1/V by symmetry. Tokens of one document are correlated
    # (shared theta), so the standard error is the cluster (per-document) ratio-estimator one.
    tok = np.asarray(default_docs.tokens)
    content = np.asarray(default_docs.content)
    counts = np.stack([((tok == w) & content).sum(1) for w in range(V)], 1)  # (B, V)
    N = content.sum(1)
    p_hat = counts.sum(0) / N.sum()
    resid = counts - p_hat[None, :] * N[:, None]
    B = len(N)
    se = np.sqrt((resid ** 2).sum(0) * B / (B - 1)) / N.sum()
    assert np.all(np.abs(p_hat - 1 / V) < Z * se), (p_hat, se)


def test_zipf_within_topic_frequencies(zipf_docs):
    cfg = ZIPF
    words, topics = _content_pairs(zipf_docs)
    assert np.array_equal(words // cfg.v, topics)
    ranks = np.arange(1, cfg.v + 1)
    p = ranks ** -ZIPF_S / np.sum(ranks ** -ZIPF_S)
    beta = np.zeros((cfg.T, cfg.T * cfg.v))
    for t in range(cfg.T):
        beta[t, t * cfg.v:(t + 1) * cfg.v] = p
    _assert_within_topic_freqs(words, topics, beta)
    # pooled over topics: rank r = word - topic*v + 1 has probability r^-s / H
    n = len(words)
    freq = np.bincount(words - topics * cfg.v, minlength=cfg.v) / n
    assert np.all(np.abs(freq - p) < Z * np.sqrt(p * (1 - p) / n)), (freq, p)


def test_overlap_topics_word_ranges(overlap_docs):
    cfg = OVERLAP
    T, v, ov = cfg.T, cfg.v, cfg.overlap
    step = v - ov
    assert cfg.V == T * step + ov == 14
    assert cfg.n_vocab == cfg.V + N_SPECIALS
    beta = np.zeros((T, cfg.V))
    for t in range(T):
        beta[t, t * step:t * step + v] = 1 / v  # topic t owns t*(v-ov) .. t*(v-ov)+v-1
    np.testing.assert_allclose(topic_word_matrix(cfg), beta, rtol=0, atol=1e-12)
    # shared words belong (for labels) to the first topic that owns them
    assert list(word_topic(cfg)) == [min(t for t in range(T) if t * step <= w < t * step + v)
                                     for w in range(cfg.V)]
    words, topics = _content_pairs(overlap_docs)
    lo = topics * step
    assert np.all((words >= lo) & (words < lo + v))
    _assert_within_topic_freqs(words, topics, beta)


def test_explicit_beta_reproduces_its_frequencies(explicit_docs):
    cfg = EXPLICIT
    assert cfg.V == 6 and cfg.n_vocab == 10 and cfg.PAD == 9
    words, topics = _content_pairs(explicit_docs)
    _assert_within_topic_freqs(words, topics, np.asarray(BETA))


# ---- topic proportions -----------------------------------------------------------------------

def test_dirichlet_theta_and_same_topic_pair_probability(default_docs, default_data_cfg):
    cfg, d = default_data_cfg, default_docs
    T, a = cfg.T, cfg.alpha
    th = np.asarray(d.theta, np.float64)
    B = th.shape[0]
    assert th.shape == (B, T) and np.all(th >= 0)
    np.testing.assert_allclose(th.sum(1), 1.0, rtol=0, atol=1e-5)
    # Dirichlet(a*1): E[theta_t] = 1/T, Var = (1/T)(1-1/T)/(T a+1), E[sum theta^2] = (a+1)/(T a+1)
    sd_t = np.sqrt((1 / T) * (1 - 1 / T) / (T * a + 1))
    assert np.all(np.abs(th.mean(0) - 1 / T) < Z * sd_t / np.sqrt(B)), th.mean(0)
    expected = (a + 1) / (T * a + 1)
    _assert_mean_within((th ** 2).sum(1), expected, "sum theta^2")
    # P(two distinct content tokens of a document share a topic), from the generating topics
    _assert_mean_within(_pair_share(d, T), expected, "pair share")


@pytest.mark.parametrize("which", ["default", "zipf"])
def test_topics_are_drawn_from_theta(which, default_docs, zipf_docs):
    """E[n_dt | theta_d, N_d] = N_d theta_dt, Var = N_d theta_dt (1 - theta_dt)."""
    d = default_docs if which == "default" else zipf_docs
    th = np.asarray(d.theta, np.float64)
    N = np.asarray(d.length).astype(np.float64)
    n = _topic_counts(d, th.shape[1])
    resid = (n - N[:, None] * th).sum(0)
    se = np.sqrt((N[:, None] * th * (1 - th)).sum(0))
    assert np.all(np.abs(resid) < Z * se), resid / se


def test_k_topics_equal_weights(overlap_docs):
    cfg = OVERLAP
    k = cfg.k
    th = np.asarray(overlap_docs.theta)
    B, T = th.shape
    support = th > 0
    assert np.all(support.sum(1) == k)
    np.testing.assert_allclose(th[support], 1 / k, rtol=0, atol=1e-7)
    # the support is a uniform random k-subset: each topic in it with probability k/T, and
    # each of the C(T, k) subsets with probability 1/C(T, k)
    p = k / T
    assert np.all(np.abs(support.mean(0) - p) < Z * np.sqrt(p * (1 - p) / B)), support.mean(0)
    codes = support.astype(int) @ (2 ** np.arange(T))
    subsets = [c for c in range(2 ** T) if bin(c).count("1") == k]
    counts = np.array([(codes == c).sum() for c in subsets])
    q = 1 / len(subsets)
    assert counts.sum() == B
    assert np.all(np.abs(counts / B - q) < Z * np.sqrt(q * (1 - q) / B)), counts
    # the generating topics are exactly the support: with N >= 30 and weights 1/2 a chosen
    # topic is missing from a document with probability 2 * 2^-30 (4000 documents: ~1e-5)
    top = np.asarray(overlap_docs.topics)
    used = np.stack([(top == t).any(1) for t in range(T)], 1)
    assert np.array_equal(used, support)


def test_k_topics_dirichlet_weights(zipf_docs):
    cfg = ZIPF
    k, a = cfg.k, cfg.alpha
    th = np.asarray(zipf_docs.theta, np.float64)
    B, T = th.shape
    support = th > 0
    assert np.all(support.sum(1) == k)
    np.testing.assert_allclose(th.sum(1), 1.0, rtol=0, atol=1e-5)
    p = k / T
    assert np.all(np.abs(support.mean(0) - p) < Z * np.sqrt(p * (1 - p) / B))
    # weights Dirichlet(a) over the k chosen topics: E[sum w^2] = (a+1)/(k a+1), both from theta
    # and from pairs of generating topics
    expected = (a + 1) / (k * a + 1)
    _assert_mean_within((th ** 2).sum(1), expected, "sum theta^2")
    _assert_mean_within(_pair_share(zipf_docs, T), expected, "pair share")
    top = np.asarray(zipf_docs.topics)
    used = np.stack([(top == t).any(1) for t in range(T)], 1)
    assert not np.any(used & ~support), "a token was generated by a topic outside the support"


# ---- determinism, jit, vmap -------------------------------------------------------------------

def test_same_key_same_batch_different_key_different(default_docs, default_data_cfg):
    again = _docs(default_data_cfg, seed=0)
    other = _docs(default_data_cfg, seed=1)
    for name in default_docs._fields:
        assert np.array_equal(getattr(again, name), getattr(default_docs, name)), name
    for name in ("tokens", "topics", "theta", "length"):
        assert not np.array_equal(getattr(other, name), getattr(default_docs, name)), name


def test_jit_and_vmap(overlap_docs):
    """vmap over keys (inside jit) reproduces the single jitted calls key by key."""
    cfg = OVERLAP
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    single = [jax.device_get(sample_docs_jit(k, cfg, BIG_BATCH)) for k in keys]
    vm = jax.device_get(jax.jit(jax.vmap(lambda k: sample_documents(k, cfg, BIG_BATCH)))(keys))
    assert vm.tokens.shape == (3, BIG_BATCH, cfg.seq_len)
    assert vm.theta.shape == (3, BIG_BATCH, cfg.T)
    for i in range(3):
        for name in single[i]._fields:
            assert np.array_equal(getattr(vm, name)[i], getattr(single[i], name)), name
    assert not np.array_equal(single[0].tokens, single[1].tokens)
    # batch=None means cfg.batch_size (shape only: no compilation)
    shp = jax.eval_shape(lambda k: sample_documents(k, cfg), keys[0]).tokens.shape
    assert shp == (cfg.batch_size, cfg.seq_len)
    # documented dtypes
    d = single[0]
    assert d.tokens.dtype == np.int32 and d.topics.dtype == np.int32
    assert d.length.dtype == np.int32 and d.theta.dtype == np.float32
    assert d.valid.dtype == np.bool_ and d.content.dtype == np.bool_


def test_row_search_draw_equals_compare_all_draw():
    """The large-vocabulary word draw (a binary search per position) gives exactly the index of
    the compare-all inverse CDF, ties at CDF values and zero-probability words included."""
    from topicdyn.data import _categorical_icdf, _categorical_icdf_rows

    rng = np.random.default_rng(0)
    for K in (2, 7, 200, 1024):
        p = rng.dirichlet(np.full(K, 0.3), size=5)
        p[:, rng.integers(0, K, max(1, K // 3))] = 0
        table = np.cumsum(p / p.sum(1, keepdims=True), 1).astype(np.float32)
        rows = rng.integers(0, 5, 20000)
        u = rng.uniform(size=20000).astype(np.float32)
        k = rng.integers(0, K, 10000)  # half the draws exactly at a CDF value
        u[:10000] = (table[rows[:10000], k] / table[rows[:10000], -1]).astype(np.float32)
        want = np.asarray(_categorical_icdf(jnp.asarray(u), jnp.asarray(table)[rows]))
        got = np.asarray(_categorical_icdf_rows(jnp.asarray(u), jnp.asarray(table),
                                                jnp.asarray(rows)))
        np.testing.assert_array_equal(got, want)
