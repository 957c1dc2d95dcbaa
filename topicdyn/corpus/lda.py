"""Topic labels of real text from a fitted LDA (gensim LdaModel, as Li, Li & Risteski did), and
the LDA-fitted twin: a synthetic generator with the fitted topic-word matrix and prior.

The fit sees the training articles only, as bags of the configured vocabulary (UNK left out),
with data.T topics, a symmetric prior alpha = 1/T (gensim's "symmetric") and a fixed random
state: the same corpus config gives the same fit. A word's label is its most probable topic,
P(t | w) proportional to beta[t, w] pi_t with pi the topics' share of the training tokens under
the fit; a word whose P(t | w) is below data.label_threshold gets -1 and is left out of every
topic statistic.

A fit is cached in memory per corpus config and, where a run directory is given, in it
(`lda/`: gensim's saved model, `fit.npz` and `fit.json` with the gensim version): a resume or a
later `probe` of the run reads the fit it trained with instead of fitting again.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from topicdyn.config.checks import ConfigError
from topicdyn.corpus.text import load_corpus

FIT_SEED = 0
ITERATIONS = 100  # per-document variational iterations (gensim's default is 50)
_FITS: dict[tuple, tuple] = {}  # fit_key -> (beta, alpha, pi, gensim version)


@dataclass(frozen=True)
class LdaFit:
    """beta (T, V) float64 rows summing to 1 (0 on UNK); alpha the symmetric prior; pi (T,) the
    topics' token shares; labels (V,) int64 (-1: none); confidence (V,) max_t P(t | w)."""

    beta: np.ndarray
    alpha: float
    pi: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    gensim_version: str


def fit_key(d) -> tuple:
    """What a fit depends on (not the label threshold: labels are derived from the fit)."""
    c = load_corpus(d)
    return (d.corpus, c.sha256, d.vocab_size, d.oov, d.heldout, d.N_max, d.T, d.lda_passes)


def _gensim():
    try:
        import gensim
        from gensim.models import LdaModel
    except ModuleNotFoundError:
        raise ConfigError("data.source: corpus needs gensim for its LDA topic labels; pip "
                          "install -e '.[text]'") from None
    return gensim.__version__, LdaModel


def _labels(beta: np.ndarray, pi: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    joint = beta * pi[:, None]  # (T, V)
    tot = joint.sum(0)
    post = np.where(tot > 0, joint / np.maximum(tot, 1e-300), 0.0)
    conf = post.max(0)
    labels = np.where((conf >= threshold) & (tot > 0), post.argmax(0), -1).astype(np.int64)
    return labels, conf


def _fit(d, random_state: int = FIT_SEED):
    version, LdaModel = _gensim()
    c = load_corpus(d)
    V = d.vocab_size
    n_words = V - (1 if d.oov == "unk" else 0)
    bows = [sorted(Counter(int(w) for w in doc if w < n_words).items())
            for doc in c.documents("train")]
    id2word = {i: c.vocab[i] for i in range(n_words)}
    model = LdaModel(bows, num_topics=d.T, id2word=id2word, passes=d.lda_passes,
                     random_state=random_state, alpha="symmetric", iterations=ITERATIONS)
    beta = np.zeros((d.T, V))
    beta[:, :n_words] = np.asarray(model.get_topics(), np.float64)
    beta /= beta.sum(1, keepdims=True)
    gamma, _ = model.inference(bows)  # (docs, T) variational Dirichlet parameters
    share = (gamma - model.alpha[None, :]) / np.maximum(
        (gamma - model.alpha[None, :]).sum(1, keepdims=True), 1e-300)
    weights = np.asarray([sum(n for _, n in b) for b in bows], np.float64)
    pi = (share * weights[:, None]).sum(0)
    pi /= pi.sum()
    return model, beta, float(model.alpha[0]), pi, version


def corpus_lda(d, cache_dir: str | Path | None = None) -> LdaFit:
    """The LDA fit of a corpus data config (d.source == "corpus"), from memory, from
    cache_dir/lda (when it holds the same fit under the installed gensim), or fitted (a few
    seconds for the shipped sample) and then saved to cache_dir/lda; labels for
    d.label_threshold."""
    key = fit_key(d)
    raw = _FITS.get(key)
    if raw is None and cache_dir is not None:
        raw = _load(Path(cache_dir) / "lda", key)
    if raw is None:
        model, beta, alpha, pi, version = _fit(d)
        raw = (beta, alpha, pi, version)
        if cache_dir is not None:
            _save(Path(cache_dir) / "lda", key, raw, model)
    elif cache_dir is not None and _load(Path(cache_dir) / "lda", key) is None:
        model, *_ = _fit(d)
        _save(Path(cache_dir) / "lda", key, raw, model)
    _FITS[key] = raw
    beta, alpha, pi, version = raw
    labels, conf = _labels(beta, pi, d.label_threshold)
    return LdaFit(beta, alpha, pi, labels, conf, version)


def _save(where: Path, key: tuple, raw: tuple, model) -> None:
    tmp = where.with_name(where.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save(str(tmp / "model"))
    beta, alpha, pi, version = raw
    np.savez(tmp / "fit.npz", beta=beta, pi=pi, alpha=alpha)
    (tmp / "fit.json").write_text(json.dumps({"key": list(key), "gensim": version},
                                             indent=1) + "\n")
    shutil.rmtree(where, ignore_errors=True)
    tmp.rename(where)


def _load(where: Path, key: tuple) -> tuple | None:
    try:
        meta = json.loads((where / "fit.json").read_text())
        version, _ = _gensim()
        if meta.get("key") != list(key) or meta.get("gensim") != version:
            return None  # another corpus config or gensim: fitted again (and saved over it)
        z = np.load(where / "fit.npz")
        beta, pi, alpha = z["beta"], z["pi"], float(z["alpha"])
    except (OSError, ValueError, KeyError):
        return None  # missing or damaged: fitted again
    return beta, alpha, pi, meta["gensim"]


def twin_data(d):
    """The LDA-fitted twin of a corpus data config: a generator (data.source=lda) with the
    fitted topic-word matrix (topic_words=explicit), the fit's Dirichlet(alpha) prior, its
    labels for the probes and the corpus's document lengths and batch size."""
    from topicdyn.config import DataConfig

    fit = corpus_lda(d)
    return DataConfig(T=d.T, topic_words="explicit", beta=tuple(map(tuple, fit.beta.tolist())),
                      labels=tuple(int(x) for x in fit.labels), prior="dirichlet",
                      alpha=fit.alpha, N_min=d.N_min, N_max=d.N_max, start_end=d.start_end,
                      batch_size=d.batch_size)


def twin_config(cfg):
    """cfg with its corpus data replaced by the LDA-fitted twin (see twin_data)."""
    return dataclasses.replace(cfg, data=twin_data(cfg.data))


def topic_summary(d, n_top: int = 8) -> list[dict]:
    """Per topic: its token share, number of labelled words and most probable words."""
    fit, c = corpus_lda(d), load_corpus(d)
    return [{"topic": t, "share": float(fit.pi[t]), "labelled": int((fit.labels == t).sum()),
             "top_words": [c.vocab[i] for i in np.argsort(-fit.beta[t])[:n_top]]}
            for t in range(d.T)]


def _adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labellings of the same items (1: identical partitions, ~0:
    unrelated)."""
    from math import comb

    n = len(a)
    if n < 2:
        return float("nan")
    pairs = lambda counts: sum(comb(int(c), 2) for c in counts)  # noqa: E731
    both = pairs(Counter(zip(a.tolist(), b.tolist())).values())
    sa, sb = pairs(Counter(a.tolist()).values()), pairs(Counter(b.tolist()).values())
    expected = sa * sb / comb(n, 2)
    top = 0.5 * (sa + sb) - expected
    return float((both - expected) / top) if top > 0 else float("nan")


def topic_number_table(d, topics=(5, 10, 20, 40), seeds=(0, 1, 2)) -> list[dict]:
    """What the number of topics does to the labels of a corpus config d: per T, fitted with
    each LDA random state in seeds, the labelled words (confidence >= d.label_threshold), the
    fewest labelled words and the fewest dominated training articles of any topic (seed 0's
    fit), and the adjusted Rand index of seed 0's labels with each other seed's on the words
    both label (the labels' stability). A few seconds per fit on the shipped sample."""
    c = load_corpus(d)
    out = []
    for T in topics:
        fits = []
        for s in seeds:
            model, beta, _, pi, _ = _fit(dataclasses.replace(d, T=T), random_state=s)
            labels, _ = _labels(beta, pi, d.label_threshold)
            fits.append((model, labels))
        model, labels = fits[0]
        n_words = d.vocab_size - (1 if d.oov == "unk" else 0)
        bows = [sorted(Counter(int(w) for w in doc if w < n_words).items())
                for doc in c.documents("train")]
        gamma, _ = model.inference(bows)
        dominant = np.bincount(gamma.argmax(1), minlength=T)
        aris = []
        for _, other in fits[1:]:
            both = (labels >= 0) & (other >= 0)
            aris.append(_adjusted_rand(labels[both], other[both]))
        sizes = np.bincount(labels[labels >= 0], minlength=T)
        out.append({"T": T, "labelled": int((labels >= 0).sum()),
                    "min_words": int(sizes.min()), "median_words": float(np.median(sizes)),
                    "min_articles": int(dominant.min()),
                    "stability_ari": [float(x) for x in aris]})
    return out
