"""Real text as a data source (topicdyn.corpus): the loader on a tiny corpus written here, the
windows drawn in the jitted sampler, the shipped Wikipedia sample, the LDA-fitted twin and bad
input through the CLI."""
import dataclasses
import subprocess
import sys
from collections import Counter

import jax
import numpy as np
import pytest

from topicdyn.config import ConfigError, preset
from topicdyn.corpus.text import heldout_articles, load_corpus
from topicdyn.masking import sample_batch

# 8 articles; word frequencies over the whole file: a 15, b 9, c 7, d 5, e 3, f 2, g 1, h 1, ...
ARTICLES = [
    "a a b c d a e a b q",
    "a b c a d a b a c r",
    "b c a d e a b a c s",
    "a a c b d f a b a t",
    "c a b a d e b c a a",
    "a b c d f g a b c u",
    "a b c d a h a b c v",
    "d c b a a b c d a w",
]


def _tiny(tmp_path, *over):
    p = tmp_path / "tiny.txt"
    p.write_text("\n".join(ARTICLES) + "\n\n")  # a blank line is not a document
    return preset("E", ["data.source=corpus", f"data.corpus={p}", "data.vocab_size=4",
                        "data.N_min=3", "data.N_max=5", "data.batch_size=16", "data.heldout=0.25",
                        *over])


def _train_counts(held):
    return Counter(w for i, a in enumerate(ARTICLES) if i not in set(held) for w in a.split())


def test_vocabulary_cut_and_heldout_split(tmp_path):
    cfg = _tiny(tmp_path)
    c = load_corpus(cfg.data)
    held = heldout_articles(len(ARTICLES), 0.25)
    assert len(held) == 2 and list(c.articles_heldout) == list(held)
    assert sorted(set(c.articles_train) | set(held)) == list(range(len(ARTICLES)))
    # the vocabulary: the 4 most frequent words of the training articles, ties by the word
    counts = _train_counts(held)
    want = [w for w, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:4]]
    assert list(c.vocab) == want
    # drop: every other word is removed from the token streams, article by article
    for split, arts in (("train", c.articles_train), ("heldout", c.articles_heldout)):
        docs = c.documents(split)
        assert len(docs) == len(arts)
        for doc, i in zip(docs, arts):
            assert [c.vocab[t] for t in doc] == [w for w in ARTICLES[i].split() if w in want]
    np.testing.assert_array_equal(c.counts, [counts[w] for w in want])
    # unk: the last content id stands for every other word
    u = load_corpus(_tiny(tmp_path, "data.oov=unk").data)
    assert list(u.vocab) == want[:3] + ["<unk>"]
    for doc, i in zip(u.documents("train"), u.articles_train):
        assert [u.vocab[t] for t in doc] == [w if w in want[:3] else "<unk>"
                                             for w in ARTICLES[i].split()]


def test_windows_are_slices_of_one_article_and_deterministic(tmp_path):
    cfg = _tiny(tmp_path)
    d, c = cfg.data, load_corpus(cfg.data)
    sample = jax.jit(sample_batch, static_argnums=(1, 2, 3))
    seen_starts = set()
    for split in ("train", "heldout"):
        ds = dataclasses.replace(d, split=split)
        docs = [tuple(x.tolist()) for x in c.documents(split)]
        for seed in range(6):
            b = jax.device_get(sample(jax.random.PRNGKey(seed), ds, cfg.mask, 64))
            for row, sel, tgt in zip(b.inputs, b.selected, b.targets):
                clean = np.where(sel, tgt, row)  # the document before MLM corruption
                assert clean[0] == d.START
                n = int(np.argmax(clean == d.END)) - 1
                assert d.N_min <= n <= d.N_max and (clean[n + 2:] == d.PAD).all()
                w = tuple(clean[1:n + 1].tolist())
                hits = [(a, j) for a, doc in enumerate(docs) for j in range(len(doc) - d.N_max + 1)
                        if doc[j:j + n] == w]
                assert hits, (split, w)  # a window never crosses an article boundary
                if split == "train":
                    seen_starts |= {(a, j) for a, j in hits}
                # MLM selects content positions only
                assert not (sel & ~((clean >= 0) & (clean < d.V))).any()
    # every start where N_max tokens fit is drawn (400 windows over 30 starts)
    fits = {(a, j) for a, doc in enumerate(c.documents("train"))
            for j in range(len(doc) - d.N_max + 1)}
    assert seen_starts >= fits and len(fits) == len(c.starts("train"))
    # a batch is a function of (key, config) alone
    b1 = jax.device_get(sample(jax.random.PRNGKey(3), d, cfg.mask, 16))
    b2 = jax.device_get(sample(jax.random.PRNGKey(3), d, cfg.mask, 16))
    b3 = jax.device_get(sample(jax.random.PRNGKey(4), d, cfg.mask, 16))
    np.testing.assert_array_equal(b1.inputs, b2.inputs)
    assert (b1.inputs != b3.inputs).any()


def test_generator_fields_are_refused_with_a_corpus(tmp_path):
    with pytest.raises(ConfigError, match="data.alpha"):
        _tiny(tmp_path, "data.alpha=0.5")
    with pytest.raises(ConfigError, match="data.vocab_size"):
        preset("E", ["data.vocab_size=50"])  # a corpus field without a corpus


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "topicdyn", *args], capture_output=True,
                          text=True)


@pytest.mark.parametrize("content,over,field", [
    (None, [], "data.corpus"),  # no such file
    ("\n \n", [], "data.corpus"),  # no document
    ("a b c\nd e f\n", ["data.vocab_size=50"], "data.vocab_size"),  # more words than types
    ("a b c\nd e f\n", ["data.vocab_size=3", "data.N_min=5", "data.N_max=9"], "data.N_max"),
])
def test_bad_corpus_input_is_one_line_exit_2(tmp_path, content, over, field):
    p = tmp_path / "c.txt"
    if content is not None:
        p.write_text(content)
    r = _cli("train", "--preset", "E", "data.source=corpus", f"data.corpus={p}",
             "data.vocab_size=3", "data.N_min=1", "data.N_max=2", *over,
             "--out", str(tmp_path / "run"))
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1 and field in lines[0], lines
    assert not (tmp_path / "run").exists()  # nothing written


# ---- the shipped sample and its LDA (the text extra; CI installs it) ---------------------------
gensim = pytest.importorskip("gensim", reason="the text extra (pip install -e '.[text]') is "
                             "not installed: the shipped Wikipedia sample and LDA need gensim")


def test_shipped_sample_is_found_in_the_package():
    cfg = preset("E", ["data.source=corpus", "data.vocab_size=300"])
    c = load_corpus(cfg.data)
    assert len(c.articles_train) + len(c.articles_heldout) == 250
    assert len(c.articles_heldout) == 25 and c.n_types > 20_000
    assert len(c.vocab) == 300 and c.stream_train.max() == 299
    assert c.counts.sum() == len(c.stream_train) and (np.diff(c.counts) <= 0).all()


def test_lda_fit_is_cached_with_its_gensim_version(tmp_path):
    import json

    from topicdyn.corpus import lda

    cfg = preset("E", ["data.source=corpus", "data.vocab_size=200", "data.T=4",
                       "data.lda_passes=2"])
    fit = lda.corpus_lda(cfg.data, cache_dir=tmp_path)
    meta = json.loads((tmp_path / "lda" / "fit.json").read_text())
    assert meta["gensim"] == gensim.__version__
    np.testing.assert_allclose(fit.beta.sum(1), 1.0, rtol=1e-12)
    # labels: the most probable topic where P(t | w) >= the threshold, recomputed here
    joint = fit.beta * fit.pi[:, None]
    post = joint / joint.sum(0)
    want = np.where(post.max(0) >= cfg.data.label_threshold, post.argmax(0), -1)
    np.testing.assert_array_equal(fit.labels, want)
    lda._FITS.clear()  # a fresh process: the fit is read back from the run directory
    again = lda.corpus_lda(cfg.data, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.beta, fit.beta)


def test_twin_reproduces_the_fitted_word_frequencies():
    from topicdyn.corpus.lda import corpus_lda, twin_data
    from topicdyn.data import topic_word_matrix

    cfg = preset("E", ["data.source=corpus", "data.vocab_size=200", "data.T=4",
                       "data.lda_passes=2"])
    fit = corpus_lda(cfg.data)
    d = twin_data(cfg.data)
    np.testing.assert_allclose(topic_word_matrix(d), fit.beta, rtol=1e-12)
    n = 3000
    from conftest import sample_docs_jit
    docs = jax.device_get(sample_docs_jit(jax.random.PRNGKey(1), d, n))
    V = d.V
    freq = np.stack([np.bincount(t[m], minlength=d.n_vocab)[:V] / m.sum()
                     for t, m in zip(docs.tokens, docs.content)])  # (docs, V)
    want = fit.beta.mean(0)  # E[theta_t] = 1/T under the symmetric Dirichlet prior
    se = freq.std(0, ddof=1) / np.sqrt(n)  # documents as clusters
    z = (freq.mean(0) - want) / np.maximum(se, 1e-12)
    top = np.argsort(-want)[:50]
    assert np.abs(z[top]).max() < 5, z[top]
    assert np.abs(z[top]).mean() < 1.2  # an honest s.e. gives |z| ~ 0.8 on average


def test_permuted_probe_against_numpy():
    """The shuffled-label baseline: the Gram gap under each of the fixed permutations, computed
    here in numpy, gives the probe's mean and sd; permutations keep topic sizes and -1 words."""
    import jax.numpy as jnp

    from topicdyn.probes.permuted import N_PERM, permuted_labels
    from topicdyn.probes.stats import block_stats

    rng = np.random.default_rng(0)
    wt = np.array([0, 0, 0, 1, 1, 1, 2, 2, -1, -1, 2, 0])
    perms = permuted_labels(wt)
    assert len(perms) == N_PERM
    for p in perms:
        assert (p[wt < 0] == -1).all() and sorted(p[wt >= 0]) == sorted(wt[wt >= 0])
    assert any((p != wt).any() for p in perms)
    G = rng.normal(size=(12, 12))
    G = G + G.T

    def gap(lab):
        keep = np.flatnonzero(lab >= 0)
        A, lab = G[np.ix_(keep, keep)], lab[keep]
        same = (lab[:, None] == lab[None, :]) & ~np.eye(len(lab), dtype=bool)
        cross = lab[:, None] != lab[None, :]
        return A[same].mean() - A[cross].mean()

    assert abs(float(block_stats(jnp.asarray(G), wt)["gap"]) - gap(wt)) < 1e-5
    gaps = [float(block_stats(jnp.asarray(G), p)["gap"]) for p in perms]
    np.testing.assert_allclose(gaps, [gap(p) for p in perms], atol=1e-5)


def test_corpus_run_end_to_end_and_its_twin(tmp_path, capsys):
    import json

    from topicdyn.cli import main

    p = tmp_path / "tiny.txt"
    p.write_text("\n".join(ARTICLES * 3) + "\n")
    common = ["data.source=corpus", f"data.corpus={p}", "data.vocab_size=6", "data.T=2",
              "data.N_min=3", "data.N_max=5", "data.batch_size=8", "data.lda_passes=2",
              "train.steps=20", "train.log_every=10", "train.ckpt_log_points=2",
              "train.ckpt_linear_from=10", "train.ckpt_every=10", "train.chunk=5",
              "train.n_eval=16", "train.n_pop_eval=16",
              "train.probes=blocks,attention,loss,dynamics,permuted"]
    run = tmp_path / "run"
    assert main(["train", "--preset", "F", *common, "--out", str(run), "--no-progress",
                 "--no-figures"]) == 0
    meta = json.loads((run / "lda" / "fit.json").read_text())
    assert meta["gensim"] == gensim.__version__
    rows = [json.loads(x) for x in (run / "verdicts.jsonl").read_text().splitlines()]
    names = {c["claim"]: c for c in rows[-1]["claims"]}
    assert names["embedding Gram beyond shuffled labels"]["verdict"] in ("pass", "fail")
    assert names["attention beyond shuffled labels"]["null_sd"] >= 0
    twin = tmp_path / "twin"
    assert main(["train", "--preset", "F", *common, "--twin", "--out", str(twin),
                 "--no-progress", "--no-figures"]) == 0
    cfg = json.loads((twin / "config.json").read_text())
    assert cfg["data"]["source"] == "lda" and cfg["data"]["topic_words"] == "explicit"
    assert len(cfg["data"]["beta"]) == 2 and len(cfg["data"]["labels"]) == 6
    th = json.loads((twin / "theory.json").read_text())
    assert "bayes/query" in th["floors"]  # the twin has a generator, so a Bayes floor
    # --twin without a corpus: one line, exit 2
    r = _cli("train", "--preset", "F", "--twin", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--twin" in r.stderr and "Traceback" not in r.stderr


def test_real_text_script_end_to_end(tmp_path):
    """scripts/real_text.py's entry point on a tiny setting: the runs, their reuse, the report
    with its tables and figures."""
    from topicdyn.realtext.cli import main

    args = ["--steps", "12", "--seeds", "2", "--vocab", "60", "--models", "E,A",
            "--topic-numbers", "2,3", "--no-timing", "--floor-batches", "5",
            "--no-run-figures", "--runs-dir", str(tmp_path / "runs"),
            "--out-dir", str(tmp_path / "out")]
    assert main(args) == 0
    text = (tmp_path / "out" / "REAL_TEXT.md").read_text()
    for name in ("corpus-E", "twin-E", "corpus-A", "twin-A"):
        assert (tmp_path / "runs" / name / "verdicts.jsonl").exists(), name
    assert "| 2 |" in text and "| 3 |" in text  # the topic-number table
    assert "embedding Gram beyond shuffled labels" not in text or "pass" in text
    assert "| E (embedding only) | corpus |" in text and "| A (attention" in text
    for f in ("gram_gap.png", "attention_ratio.png", "loss.png"):
        assert (tmp_path / "out" / "figures" / "real_text" / f).stat().st_size > 0, f
    before = (tmp_path / "runs" / "corpus-E" / "probes.jsonl").read_text()
    assert main(args) == 0  # finished runs are reused, not retrained
    assert (tmp_path / "runs" / "corpus-E" / "probes.jsonl").read_text() == before
    assert main(["--models", "Q"]) == 2
