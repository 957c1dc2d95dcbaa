"""Embedding-space probes (probes/embedding_space.py) against numpy/scipy, on the Bayes predictor
itself and on wrong predictors (Pearson, Spearman, pair concordance), and `topicdyn probe RUN --probes near` on a trained run."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import rankdata

from topicdyn.probes.embedding_space import near_stats


def _numpy_concordance(zi, ri):
    """Share of the word pairs the reference orders strictly that z orders the same way (ties
    in z count 1/2); 1 where the reference orders no pair. -inf entries tie at the bottom."""
    num = den = 0.0
    for a in range(len(ri)):
        for b in range(len(ri)):
            if ri[a] > ri[b]:  # -inf > -inf is False: impossible words tie
                den += 1
                num += 1.0 if zi[a] > zi[b] else 0.5 if zi[a] == zi[b] else 0.0
    return num / den if den else 1.0


def _numpy_near(z, r, rows, V):
    """The documented near_stats, in numpy: Pearson over the finite entries of the rows whose
    finite reference varies; Spearman over every content word with average ranks for ties,
    impossible words (log P* = -inf) tied at the bottom; concordance over the strictly ordered
    pairs."""
    p, s, c = [], [], []
    for i in np.nonzero(rows)[0]:
        zi, ri = z[i, :V], r[i, :V]
        ok = np.isfinite(ri)
        if np.ptp(ri[ok]) > 1e-9:
            p.append(np.corrcoef(zi[ok], ri[ok])[0, 1])
        low = np.where(ok, ri, -np.inf)  # rankdata ties every -inf at the bottom
        s.append(np.corrcoef(rankdata(zi), rankdata(low))[0, 1])
        c.append(_numpy_concordance(zi, low))
    return np.mean(p), np.mean(s), np.mean(c)


def _tied_reference(rng, R, V, nv, T):
    """Rows of log P* with ties (equal within a topic, as for disjoint uniform topics), topics a
    row cannot hold at -inf, and special ids (V..nv) at -inf."""
    v = V // T
    ref = np.full((R, nv), -np.inf)
    for i in range(R):
        held = rng.random(T) < 0.7
        held[rng.integers(T)] = True
        pt = np.where(held, rng.dirichlet(np.ones(T)), 0.0)
        if i == 0:  # two topics of equal weight: ties across topics too
            held = np.arange(T) < 3
            pt = np.where(held, [0.4, 0.4, 0.2] + [0.0] * (T - 3), 0.0)
        with np.errstate(divide="ignore"):
            ref[i, :V] = np.log(np.repeat(pt / pt.sum(), v) / v)
    ref[1, :V] = np.log(1.0 / V)
    ref[1, :v] = -np.inf  # finite part constant, but ranks still vary: Spearman only
    return ref


def test_near_stats_match_numpy_and_their_exact_values():
    rng = np.random.default_rng(0)
    R, T, V, nv = 40, 4, 12, 16
    ref = _tied_reference(rng, R, V, nv, T)
    z = rng.normal(size=(R, nv))
    z[:, :V] += 0.5 * np.where(np.isfinite(ref[:, :V]), ref[:, :V], -5.0)  # some signal
    z = np.round(z, 1)  # ties in the logits too
    rows = rng.random(R) < 0.7
    rows[:2] = True
    got = jax.device_get(near_stats(jnp.asarray(z, jnp.float32), jnp.asarray(ref, jnp.float32),
                                    jnp.asarray(rows), V))
    want = _numpy_near(z, ref, rows, V)
    np.testing.assert_allclose([got["near_pearson"], got["near_spearman"],
                                got["near_concordance"]], want, rtol=1e-4, atol=1e-6)
    assert 0.5 < want[2] < 0.99  # neither unrelated nor perfect
    # the Bayes predictor as a model (impossible words at a very low logit): exactly 1
    bayes = np.where(np.isfinite(ref), ref, -50.0)
    got = near_stats(jnp.asarray(bayes), jnp.asarray(ref), jnp.asarray(rows), V)
    for k in ("near_pearson", "near_spearman", "near_concordance"):
        assert abs(float(got[k]) - 1) < 1e-5, k
    got = near_stats(jnp.asarray(-bayes), jnp.asarray(ref), jnp.asarray(rows), V)  # inverted
    assert float(got["near_pearson"]) < -0.99 and float(got["near_spearman"]) < -0.99
    # every strictly ordered pair reversed: 0, except rows that order no pair (1 by convention)
    none = [np.ptp(np.where(np.isfinite(ref[i, :V]), ref[i, :V], -99.0)) == 0
            for i in np.nonzero(rows)[0]]
    np.testing.assert_allclose(float(got["near_concordance"]), np.mean(none), atol=1e-6)
    # unrelated logits: concordance about 1/2
    zr = rng.normal(size=(400, nv))
    refs = np.concatenate([ref] * 10)
    got = near_stats(jnp.asarray(zr), jnp.asarray(refs), jnp.ones(400, bool), V)
    assert abs(float(got["near_concordance"]) - 0.5) < 0.03


def test_near_spearman_counts_impossible_words_as_tied_at_the_bottom():
    """One row, closed form: P* = (a, a, b, b, 0, 0) with a > b, logits (6, 5, 4, 3, 2, 1).
    Average ranks of the reference: (4.5, 4.5, 2.5, 2.5, 0.5, 0.5); Spearman = their correlation
    with (5..0). If the impossible words were dropped instead, the value would differ."""
    ref = np.array([[np.log(0.3)] * 2 + [np.log(0.2)] * 2 + [-np.inf] * 2])
    z = np.array([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    got = near_stats(jnp.asarray(z), jnp.asarray(ref), jnp.asarray([True]), 6)
    ra, rb = np.arange(5, -1, -1.0), np.array([4.5, 4.5, 2.5, 2.5, 0.5, 0.5])
    want = np.corrcoef(ra, rb)[0, 1]
    np.testing.assert_allclose(float(got["near_spearman"]), want, rtol=1e-6)
    dropped = np.corrcoef(ra[:4], rb[:4])[0, 1]
    assert abs(want - dropped) > 1e-3  # the test tells the two conventions apart
    # concordance, by hand: 4 a>b pairs, 4 a>impossible, 4 b>impossible; z = (6, 3, 4, 5, 2, 2)
    # gets both a>b pairs of word 1 wrong and ties nothing the reference orders: 10/12
    z2 = np.array([[6.0, 3.0, 4.0, 5.0, 2.0, 2.0]])
    got2 = near_stats(jnp.asarray(z2), jnp.asarray(ref), jnp.asarray([True]), 6)
    np.testing.assert_allclose(float(got2["near_concordance"]), 10 / 12, rtol=1e-6)
    z3 = np.array([[6.0, 4.0, 4.0, 5.0, 2.0, 2.0]])  # a tie on an ordered pair counts 1/2
    got3 = near_stats(jnp.asarray(z3), jnp.asarray(ref), jnp.asarray([True]), 6)
    np.testing.assert_allclose(float(got3["near_concordance"]), 10.5 / 12, rtol=1e-6)
    # Pearson over the 4 possible words only: corr((6,5,4,3), log(.3,.3,.2,.2))
    np.testing.assert_allclose(float(got["near_pearson"]),
                               np.corrcoef(z[0, :4], ref[0, :4])[0, 1], rtol=1e-6)


def test_near_stats_bayes_predictor_gives_one_with_a_uniform_posterior_row():
    """The module's promise "the Bayes predictor itself gives 1" for P-near, on contexts where one
    row has P* uniform over every content word (e.g. equal counts of every topic under a
    Dirichlet prior). Spearman is undefined on such a row (its reference does not vary) and, as
    Pearson does, it should be left out of the mean rather than counted as 0."""
    rng = np.random.default_rng(1)
    R, T, V, nv = 6, 3, 9, 13
    ref = _tied_reference(rng, R, V, nv, T)
    ref[2, :V] = np.log(1.0 / V)  # a uniform posterior predictive
    bayes = np.where(np.isfinite(ref), ref, -50.0)
    got = near_stats(jnp.asarray(bayes), jnp.asarray(ref), jnp.ones(R, bool), V)
    assert abs(float(got["near_pearson"]) - 1) < 1e-5
    assert abs(float(got["near_concordance"]) - 1) < 1e-5
    assert abs(float(got["near_spearman"]) - 1) < 1e-5, float(got["near_spearman"])


def test_probing_a_subset_keeps_the_other_probes(tmp_path):
    """`topicdyn probe RUN --probes near` adds near/* to every row; nothing else is lost."""
    import json

    from topicdyn.cli import main

    tiny = ["data.T=3", "data.v=4", "data.N_min=10", "data.N_max=20", "data.batch_size=8",
            "train.steps=20", "train.log_every=10", "train.ckpt_steps=[0,10,20]",
            "train.chunk=10", "train.n_pop_eval=50"]
    run = tmp_path / "run"
    assert main(["train", "--preset", "V", "--out", str(run), "--no-progress",
                 "--no-figures"] + tiny) == 0
    before = [json.loads(x) for x in (run / "probes.jsonl").read_text().splitlines()]
    assert main(["probe", str(run), "--probes", "near"]) == 0
    after = [json.loads(x) for x in (run / "probes.jsonl").read_text().splitlines()]
    assert [r["step"] for r in after] == [r["step"] for r in before] == [0, 10, 20]
    for a, b in zip(after, before):
        assert {k: v for k, v in a.items() if not k.startswith("near/")} == b
        assert len(a["near/near_pearson"]) == 1


def _numpy_copy_bias(logp, counts, wt, T):
    out = []
    for r in range(len(logp)):
        gs = []
        for t in range(T):
            words = np.nonzero(wt == t)[0]
            a = [logp[r, w] for w in words if counts[r, w] > 0]
            b = [logp[r, w] for w in words if counts[r, w] == 0]
            if a and b:
                gs.append(np.mean(a) - np.mean(b))
        out.append(np.mean(gs) if gs else 0.0)
    return np.array(out)


def test_copy_bias_is_zero_for_bayes_and_positive_for_a_copier():
    from topicdyn.probes.embedding_space import copy_bias

    T, v, alpha = 4, 5, 0.1
    V = T * v
    wt = np.repeat(np.arange(T), v)
    rng = np.random.default_rng(3)
    counts = np.zeros((40, V))
    for r in range(40):  # documents of 2 topics, 12 visible words
        topics = rng.choice(T, 2, replace=False)
        for w in rng.choice(np.r_[topics[0] * v + np.arange(v), topics[1] * v + np.arange(v)],
                            12):
            counts[r, w] += 1
    n_t = counts @ (wt[:, None] == np.arange(T)).astype(float)
    bayes = np.log((alpha + n_t[:, wt]) / (T * alpha + counts.sum(1, keepdims=True)) / v)
    g = np.asarray(copy_bias(jnp.asarray(bayes), jnp.asarray(counts), jnp.asarray(wt), T)[0])
    np.testing.assert_allclose(g, 0.0, atol=1e-6)  # EMBEDDING_SPACE.md §3: exactly 0
    copier = np.log(np.exp(bayes) + 0.05 * (counts > 0))  # extra mass on seen tokens
    g, info = copy_bias(jnp.asarray(copier), jnp.asarray(counts), jnp.asarray(wt), T)
    g, info = np.asarray(g), np.asarray(info)
    np.testing.assert_allclose(g, _numpy_copy_bias(copier, counts, wt, T), rtol=1e-5, atol=1e-7)
    assert np.all(g[info] > 0.01) and info.mean() > 0.9 and np.all(g[~info] == 0)
