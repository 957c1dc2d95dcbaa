"""A text corpus as token arrays: reading, the vocabulary cut, the held-out split, windows.

Everything here is a function of the data config's corpus fields alone (the run seed plays no
part), so every run and every seed of one corpus config sees the same vocabulary and the same
held-out articles. Needs no gensim, except to find the sample gensim ships.

Format of a corpus file: one document per line, tokens separated by whitespace (already
normalised: the shipped sample is lower-cased and stemmed, its stop words removed).
"""
from __future__ import annotations

import functools
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from topicdyn.config.checks import ConfigError

SHIPPED = {  # name -> path inside the gensim package
    "gensim:wiki250": ("test", "test_data", "head500.noblanks.cor"),
}
SPLIT_SEED = 0  # the held-out articles are a property of the corpus, not of a run


@dataclass(frozen=True)
class Corpus:
    """A tokenised corpus. Token ids 0..V-1 are content words (with oov=unk, V-1 is UNK).

    vocab: (V,) words; stream_<split>: (n,) int32 token ids of that split's articles, one after
    the other; starts_<split>: (S,) int32 offsets into the stream where a window of N_max
    tokens fits inside one article; articles_<split>: indices (into the file's documents) of
    the split's articles, offsets_<split>: (n_articles + 1,) where each begins in the stream;
    counts: (V,) training-split counts; sha256 of the file's bytes."""

    vocab: tuple[str, ...]
    stream_train: np.ndarray
    starts_train: np.ndarray
    stream_heldout: np.ndarray
    starts_heldout: np.ndarray
    articles_train: np.ndarray
    articles_heldout: np.ndarray
    offsets_train: np.ndarray
    offsets_heldout: np.ndarray
    counts: np.ndarray
    n_types: int
    sha256: str

    def stream(self, split: str) -> np.ndarray:
        return self.stream_train if split == "train" else self.stream_heldout

    def starts(self, split: str) -> np.ndarray:
        return self.starts_train if split == "train" else self.starts_heldout

    def documents(self, split: str = "train") -> list[np.ndarray]:
        """The split's articles as arrays of token ids (after the vocabulary cut)."""
        s = self.stream(split)
        o = self.offsets_train if split == "train" else self.offsets_heldout
        return [s[a:b] for a, b in zip(o[:-1], o[1:])]


def corpus_path(spec: str) -> Path:
    """The file of a corpus spec: a shipped name (gensim:...) or a path."""
    if spec in SHIPPED:
        try:
            from importlib.resources import files
            root = files("gensim")
        except ModuleNotFoundError:
            raise ConfigError(f"data.corpus: {spec} is the sample gensim ships, and gensim is "
                              "not installed; pip install -e '.[text]'") from None
        p = Path(str(root.joinpath(*SHIPPED[spec])))
        if not p.is_file():
            raise ConfigError(f"data.corpus: {spec} is missing from the installed gensim "
                              f"(expected {'/'.join(SHIPPED[spec])} in the package)")
        return p
    if spec.startswith("gensim:"):
        raise ConfigError(f"data.corpus: shipped corpora are {', '.join(SHIPPED)}, got {spec!r}")
    p = Path(spec)
    if not p.is_file():
        raise ConfigError(f"data.corpus: {spec} does not exist (a text file, one document per "
                          "line, or gensim:wiki250)")
    return p


@functools.lru_cache(maxsize=8)
def _read(spec: str) -> tuple[tuple[tuple[str, ...], ...], str]:
    p = corpus_path(spec)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"data.corpus: {spec} cannot be read ({e.strerror or e})") from None
    docs = tuple(tuple(line.split()) for line in raw.decode("utf-8", errors="replace")
                 .splitlines() if line.split())
    if not docs:
        raise ConfigError(f"data.corpus: {spec} has no documents (one per line, tokens "
                          "separated by spaces)")
    return docs, hashlib.sha256(raw).hexdigest()


def heldout_articles(n: int, share: float) -> np.ndarray:
    """Sorted indices of the held-out articles of n: round(share n), at least 1, at most n-1."""
    k = min(max(int(round(share * n)), 1), n - 1)
    return np.sort(np.random.default_rng(SPLIT_SEED).permutation(n)[:k])


def _key(d) -> tuple:
    return (d.corpus, d.vocab_size, d.oov, d.heldout, d.N_max)


def load_corpus(d) -> Corpus:
    """The tokenised corpus of a data config (cached per corpus fields)."""
    return _load(*_key(d))


@functools.lru_cache(maxsize=8)
def _load(spec: str, vocab_size: int, oov: str, heldout: float, n_max: int) -> Corpus:
    docs, digest = _read(spec)
    if len(docs) < 2:
        raise ConfigError(f"data.corpus: {spec} has {len(docs)} document; a held-out split "
                          "needs at least 2")
    held = heldout_articles(len(docs), heldout)
    is_held = np.zeros(len(docs), bool)
    is_held[held] = True
    counts = Counter(w for i, doc in enumerate(docs) if not is_held[i] for w in doc)
    n_words = vocab_size - (1 if oov == "unk" else 0)
    if n_words > len(counts):
        raise ConfigError(f"data.vocab_size: at most {len(counts) + (oov == 'unk')} (the "
                          f"training articles of {spec} have {len(counts)} word types"
                          f"{' + UNK' if oov == 'unk' else ''}), got {vocab_size}")
    # ties broken by the word: the vocabulary is the same on every machine
    vocab = [w for w, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:n_words]]
    index = {w: i for i, w in enumerate(vocab)}
    unk = n_words if oov == "unk" else None
    if unk is not None:
        vocab.append("<unk>")

    def ids(doc):
        if unk is None:
            return np.asarray([index[w] for w in doc if w in index], np.int32)
        return np.asarray([index.get(w, unk) for w in doc], np.int32)

    parts = {}
    for split, sel in (("train", ~is_held), ("heldout", is_held)):
        arts = np.nonzero(sel)[0]
        toks = [ids(docs[i]) for i in arts]
        offs = np.concatenate([[0], np.cumsum([len(t) for t in toks])]).astype(np.int64)
        starts = np.concatenate([np.arange(o, o + len(t) - n_max + 1, dtype=np.int64)
                                 for o, t in zip(offs[:-1], toks)] or [np.zeros(0, np.int64)])
        if len(starts) == 0:
            longest = max((len(t) for t in toks), default=0)
            raise ConfigError(f"data.N_max: at most {longest} (the longest {split} article of "
                              f"{spec} after the vocabulary cut), got {n_max}")
        if offs[-1] >= 2 ** 31:
            raise ConfigError(f"data.corpus: {spec} has more than 2^31 tokens")
        parts[split] = (np.concatenate(toks).astype(np.int32), starts.astype(np.int32), arts,
                        offs)
    c = np.bincount(parts["train"][0], minlength=vocab_size).astype(np.int64)
    tr, he = parts["train"], parts["heldout"]
    return Corpus(tuple(vocab), tr[0], tr[1], he[0], he[1], tr[2], he[2], tr[3], he[3], c,
                  len(counts), digest)


def check_corpus(d) -> None:
    """Raise ConfigError where the corpus fields cannot give batches (missing or empty file, a
    vocabulary larger than its types, windows longer than every article)."""
    load_corpus(d)
