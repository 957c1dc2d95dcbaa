"""The five frozen config sections and `Config` (BRIEF §2-3). Every field is checked at
construction; a bad value raises ConfigError naming the field and the allowed values."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

from topicdyn.config.checks import (ConfigError, check, choice, int_in, is_int,
                                    is_num, positive, prob)


# Upper bounds of the sizes (a larger value is refused before anything is allocated; what fits
# in memory is checked separately before compiling, topicdyn.loop.check_memory)
MAX_TOPICS, MAX_WORDS, MAX_LENGTH, MAX_BATCH = 4096, 65536, 65536, 2**20
MAX_WIDTH, MAX_MEMBERS, MAX_CHUNK, MAX_EVAL = 65536, 2**20, 10_000, 100_000
MAX_STEPS = 2**31 - 1  # the step counter is int32 on device
PRESET_LABEL = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,63}")

# Special-token ids come after the content words: word index == token id, so topic lookups can
# never be off by the number of specials (the reference code's labelling bug, BRIEF §5).
N_SPECIALS = 4  # [MASK], START, END, PAD


@dataclass(frozen=True)
class DataConfig:
    """LDA generator (BRIEF §2). Vocabulary: content words 0..V-1, then [MASK], START, END, PAD."""

    T: int = 10  # number of topics
    v: int = 10  # words per topic
    topic_words: str = "disjoint"  # disjoint | overlap | zipf | explicit
    overlap: int = 0  # overlap mode: words shared by neighbouring topics
    zipf_s: float = 1.0  # zipf mode: P(word rank r within its topic) ~ r^-s
    beta: tuple[tuple[float, ...], ...] | None = None  # explicit mode: T x V topic-word matrix
    prior: str = "dirichlet"  # dirichlet | k_topics
    alpha: float = 0.1  # Dirichlet concentration (per topic)
    k: int = 2  # k_topics prior: topics per document
    k_weights: str = "dirichlet"  # k_topics prior: weights Dirichlet(alpha) over the k, or equal
    N_min: int = 100
    N_max: int = 150
    start_end: bool = True  # wrap each document in START ... END
    batch_size: int = 40
    # explicit mode: the topic each word is counted under by the probes (-1: none), e.g. the
    # labels of an LDA fit (topicdyn.corpus.twin_data); None: the generator's own topics
    labels: tuple[int, ...] | None = None
    # ---- real text (topicdyn.corpus; needs the text extra for LDA labels) ----
    # lda: documents from the generator above; corpus: windows of N_min..N_max tokens of the
    # articles of data.corpus (T: the topics of the LDA fitted to them for the labels)
    source: str = "lda"
    corpus: str = "gensim:wiki250"  # gensim:wiki250 (the sample gensim ships) or a text file
    vocab_size: int = 1000  # content words: the most frequent of the training articles
    oov: str = "drop"  # other words: drop them | unk (the last content id is UNK)
    heldout: float = 0.1  # share of the articles held out (evaluation set, population loss)
    split: str = "train"  # articles the training batches come from: train | heldout
    label_threshold: float = 0.5  # a word's LDA label counts where P(topic | word) >= this
    lda_passes: int = 10  # gensim LdaModel passes of the label fit

    def __post_init__(self):
        int_in("data.T", self.T, 1, MAX_TOPICS)
        int_in("data.v", self.v, 1, MAX_WORDS)
        choice("data.topic_words", self.topic_words, ("disjoint", "overlap", "zipf", "explicit"))
        check(is_int(self.overlap) and 0 <= self.overlap < self.v, "data.overlap",
              f"an integer in [0, v-1] = [0, {self.v - 1}]", self.overlap)
        positive("data.zipf_s", self.zipf_s)
        if self.topic_words == "explicit":
            b = self.beta
            check(b is not None and len(b) == self.T, "data.beta",
                  f"a T x V matrix with T={self.T} rows for topic_words=explicit", b)
            width = len(b[0])
            for row in b:
                check(len(row) == width and all(is_num(x) and x >= 0 for x in row)
                      and abs(sum(row) - 1.0) < 1e-4, "data.beta",
                      "rows of equal length with non-negative entries summing to 1", row)
        elif self.beta is not None:
            raise ConfigError(f"data.beta: only allowed with topic_words=explicit, got "
                              f"topic_words={self.topic_words!r}")
        choice("data.prior", self.prior, ("dirichlet", "k_topics"))
        positive("data.alpha", self.alpha)
        check(is_int(self.k) and 1 <= self.k <= self.T, "data.k",
              f"an integer in [1, T] = [1, {self.T}]", self.k)
        choice("data.k_weights", self.k_weights, ("dirichlet", "equal"))
        int_in("data.N_min", self.N_min, 1, MAX_LENGTH)
        check(is_int(self.N_max) and self.N_min <= self.N_max <= MAX_LENGTH, "data.N_max",
              f"an integer in [N_min = {self.N_min}, {MAX_LENGTH}]", self.N_max)
        check(isinstance(self.start_end, bool), "data.start_end", "true or false", self.start_end)
        int_in("data.batch_size", self.batch_size, 1, MAX_BATCH)
        if self.labels is not None:
            check(self.topic_words == "explicit", "data.labels",
                  "null unless topic_words=explicit", "a list")
            check(len(self.labels) == self.V and all(is_int(x) and -1 <= x < self.T
                                                      for x in self.labels), "data.labels",
                  f"{self.V} integers in [-1, T-1] = [-1, {self.T - 1}]", self.labels)
        choice("data.source", self.source, ("lda", "corpus"))
        check(isinstance(self.corpus, str) and self.corpus != "", "data.corpus",
              "gensim:wiki250 or the path of a text file (one document per line)", self.corpus)
        int_in("data.vocab_size", self.vocab_size, 2, MAX_WORDS)
        choice("data.oov", self.oov, ("drop", "unk"))
        check(is_num(self.heldout) and 0 < self.heldout < 1, "data.heldout",
              "a number in (0, 1)", self.heldout)
        choice("data.split", self.split, ("train", "heldout"))
        prob("data.label_threshold", self.label_threshold)
        int_in("data.lda_passes", self.lda_passes, 1, 1000)
        defaults = DataConfig.__dataclass_fields__
        if self.source == "corpus":  # the generator's fields would silently mean nothing
            for name in GENERATOR_FIELDS:
                check(getattr(self, name) == defaults[name].default, f"data.{name}",
                      f"its default {defaults[name].default!r} with data.source=corpus (the "
                      "text is the generator)", getattr(self, name))
            from topicdyn.corpus.text import check_corpus  # late: corpus imports config
            check_corpus(self)
        else:
            for name in CORPUS_FIELDS:
                check(getattr(self, name) == defaults[name].default, f"data.{name}",
                      f"its default {defaults[name].default!r} unless data.source=corpus",
                      getattr(self, name))

    @property
    def V(self) -> int:
        """Number of content words."""
        if self.source == "corpus":
            return self.vocab_size
        if self.topic_words == "explicit":
            return len(self.beta[0])
        if self.topic_words == "overlap":
            return self.T * (self.v - self.overlap) + self.overlap
        return self.T * self.v

    @property
    def n_vocab(self) -> int:
        return self.V + N_SPECIALS

    @property
    def seq_len(self) -> int:
        return self.N_max + (2 if self.start_end else 0)

    @property
    def MASK(self) -> int:
        return self.V

    @property
    def START(self) -> int:
        return self.V + 1

    @property
    def END(self) -> int:
        return self.V + 2

    @property
    def PAD(self) -> int:
        return self.V + 3


GENERATOR_FIELDS = ("v", "topic_words", "overlap", "zipf_s", "beta", "labels", "prior", "alpha",
                    "k", "k_weights")
CORPUS_FIELDS = ("corpus", "vocab_size", "oov", "heldout", "split", "label_threshold",
                 "lda_passes")


@dataclass(frozen=True)
class MaskConfig:
    """MLM corruption (BRIEF §3). The defaults are the reference code's conventions."""

    p_mask: float = 0.15  # each content position is selected for the loss with this probability
    p_replace_mask: float = 0.8  # a selected position shows [MASK] ...
    p_replace_random: float = 0.1  # ... or a random token ...
    p_keep: float = 0.1  # ... or its correct token
    random_source: str = "all"  # random tokens from all ids (reference) or content words only
    key_set: str = "unselected"  # keys = unselected positions (reference) | all visible positions
    # mlm: loss at selected positions (the paper's objective); causal: every position predicts
    # the next token from its prefix (no corruption; the p_* fields then do not apply)
    objective: str = "mlm"

    def __post_init__(self):
        prob("mask.p_mask", self.p_mask)
        check(self.p_mask > 0, "mask.p_mask", "> 0 (no selected position means no loss)",
              self.p_mask)
        for name in ("p_replace_mask", "p_replace_random", "p_keep"):
            prob(f"mask.{name}", getattr(self, name))
        total = self.p_replace_mask + self.p_replace_random + self.p_keep
        check(abs(total - 1.0) < 1e-6, "mask.p_replace_mask+p_replace_random+p_keep",
              "proportions summing to 1", round(total, 9))
        choice("mask.random_source", self.random_source, ("all", "content"))
        choice("mask.key_set", self.key_set, ("unselected", "all"))
        choice("mask.objective", self.objective, ("mlm", "causal"))


# every group a built-in variant may have; a variant declares its own (Variant.groups), and
# group names in optim.* are checked against the config's variant
PARAM_GROUPS = ("embedding", "position", "query", "key", "value", "decoder", "layernorm")


@dataclass(frozen=True)
class ModelConfig:
    """One-layer transformer variant (BRIEF §3). `init_*` override `init_scale` (a normal std)."""

    name: str = "attention"  # a registered variant (topicdyn.models) or package.module:attr
    d_model: int | None = None  # None: the vocabulary size (one-hot-compatible width)
    n_heads: int = 1
    n_layers: int = 1  # attention layers (each with model.residual / model.layernorm)
    positional: str = "none"  # none | learned | sinusoidal (added to the token embedding)
    embedding: str = "trained"  # trained | onehot
    attention: str = "trained"  # trained | uniform (W^Q = W^K = 0, frozen)
    value: str = "trained"  # trained | identity | topic_block
    decoder: str = "trained"  # trained | identity | tied
    residual: bool = False
    layernorm: bool = False
    loss: str = "ce"  # ce | squared
    impl: str = "auto"  # training loss: auto (fast when exact for the variant) | generic | fast
    init_scale: float = 0.02  # std of the normal init of every trained matrix
    init_embedding: float | None = None
    init_query: float | None = None
    init_key: float | None = None
    init_value: float | None = None
    init_decoder: float | None = None
    init_position: float | None = None

    def __post_init__(self):
        check(isinstance(self.name, str) and self.name != "", "model.name",
              "a variant name", self.name)
        if self.d_model is not None:
            int_in("model.d_model", self.d_model, 1, MAX_WIDTH)
        int_in("model.n_heads", self.n_heads, 1, MAX_WIDTH)
        check(is_int(self.n_layers) and 1 <= self.n_layers <= 16, "model.n_layers",
              "an integer in [1, 16]", self.n_layers)
        choice("model.positional", self.positional, ("none", "learned", "sinusoidal"))
        choice("model.embedding", self.embedding, ("trained", "onehot"))
        choice("model.attention", self.attention, ("trained", "uniform"))
        choice("model.value", self.value, ("trained", "identity", "topic_block"))
        choice("model.decoder", self.decoder, ("trained", "identity", "tied"))
        check(isinstance(self.residual, bool), "model.residual", "true or false", self.residual)
        check(isinstance(self.layernorm, bool), "model.layernorm", "true or false",
              self.layernorm)
        choice("model.loss", self.loss, ("ce", "squared"))
        choice("model.impl", self.impl, ("auto", "generic", "fast"))
        check(is_num(self.init_scale) and self.init_scale >= 0, "model.init_scale",
              "a number >= 0", self.init_scale)
        for g in ("embedding", "query", "key", "value", "decoder", "position"):
            s = getattr(self, f"init_{g}")
            if s is not None:
                check(is_num(s) and s >= 0, f"model.init_{g}", "a number >= 0 or null", s)

    def init_std(self, group: str) -> float:
        s = getattr(self, f"init_{group}", None)
        return self.init_scale if s is None else s


@dataclass(frozen=True)
class OptimConfig:
    """optax optimiser; frozen groups are masked inside optax so they stay bit-identical."""

    name: str = "adam"  # adam | adamw | sgd
    lr: float = 0.01
    schedule: str = "constant"  # constant | cosine | warmup_cosine | linear
    warmup_steps: int = 0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0  # adamw only
    grad_clip: float | None = None  # global-norm clipping
    group_lr: tuple[tuple[str, float], ...] = ()  # per-group learning-rate multipliers
    freeze: tuple[str, ...] = ()  # extra frozen groups (on top of the model's fixed matrices)
    unfreeze_at: tuple[tuple[str, int], ...] = ()  # (group, step): frozen until that step

    def __post_init__(self):
        choice("optim.name", self.name, ("adam", "adamw", "sgd"))
        positive("optim.lr", self.lr)
        choice("optim.schedule", self.schedule, ("constant", "cosine", "warmup_cosine", "linear"))
        int_in("optim.warmup_steps", self.warmup_steps, 0, MAX_STEPS)
        for name in ("b1", "b2"):
            v = getattr(self, name)
            check(is_num(v) and 0 <= v < 1, f"optim.{name}", "a number in [0, 1)", v)
        positive("optim.eps", self.eps)
        check(is_num(self.momentum) and 0 <= self.momentum < 1, "optim.momentum",
              "a number in [0, 1)", self.momentum)
        check(is_num(self.weight_decay) and self.weight_decay >= 0, "optim.weight_decay",
              "a number >= 0", self.weight_decay)
        if self.weight_decay > 0:
            check(self.name == "adamw", "optim.weight_decay",
                  "0 unless optim.name=adamw (adam and sgd have no decoupled decay)",
                  self.weight_decay)
        if self.grad_clip is not None:
            positive("optim.grad_clip", self.grad_clip)
        # group names are checked against the variant's groups by Config
        for g, m in self.group_lr:
            check(isinstance(g, str), "optim.group_lr", "group names", g)
            check(is_num(m) and m >= 0, "optim.group_lr", "multipliers >= 0", m)
        for g in self.freeze:
            check(isinstance(g, str), "optim.freeze", "group names", g)
        for g, s in self.unfreeze_at:
            check(isinstance(g, str), "optim.unfreeze_at", "group names", g)
            check(is_int(s) and 0 <= s <= MAX_STEPS, "optim.unfreeze_at", "steps >= 0", s)


@dataclass(frozen=True)
class TrainConfig:
    """Steps, seeds and the logging/checkpoint schedule."""

    steps: int = 5000
    seed: int = 0
    n_seeds: int = 1  # ensemble members seed, seed+1, ..., trained together under vmap
    log_every: int = 50
    ckpt_log_points: int = 24  # log-spaced checkpoints in [1, ckpt_linear_from]
    ckpt_linear_from: int = 500
    ckpt_every: int = 500  # linear spacing after ckpt_linear_from
    ckpt_steps: tuple[int, ...] = ()  # explicit checkpoint steps (replaces the schedule)
    chunk: int = 50  # steps per compiled lax.scan chunk (capacity; shorter chunks are masked)
    n_eval: int = 80  # documents in the fixed evaluation set (probes, eval-set theory, figures)
    # fresh documents (its own stream) of the population loss estimate the loss claims compare
    # with population theory; 0: no population estimate (claims fall back to the eval set)
    n_pop_eval: int = 4000
    # probes run at every checkpoint (topicdyn.probes registry names); the embedding-space
    # probes (EMBEDDING_SPACE.md) are opt-in: red, copy, coh, sample, near, walk, concept, pmi
    probes: tuple[str, ...] = ("blocks", "attention", "loss", "dynamics")

    def __post_init__(self):
        int_in("train.steps", self.steps, 1, MAX_STEPS)
        check(is_int(self.seed) and 0 <= self.seed < 2**31, "train.seed",
              "an integer in [0, 2^31)", self.seed)
        if is_int(self.seed) and 0 <= self.seed < 2**31:  # member seeds seed..seed+n-1 never wrap
            int_in("train.n_seeds", self.n_seeds, 1, min(MAX_MEMBERS, 2**31 - self.seed))
        int_in("train.log_every", self.log_every, 1, MAX_STEPS)
        int_in("train.ckpt_log_points", self.ckpt_log_points, 0, 10_000)
        int_in("train.ckpt_linear_from", self.ckpt_linear_from, 1, MAX_STEPS)
        int_in("train.ckpt_every", self.ckpt_every, 1, MAX_STEPS)
        for s in self.ckpt_steps:
            check(is_int(s) and 0 <= s <= self.steps, "train.ckpt_steps",
                  f"steps in [0, steps={self.steps}]", s)
        int_in("train.chunk", self.chunk, 1, MAX_CHUNK)
        int_in("train.n_eval", self.n_eval, 1, MAX_EVAL)
        int_in("train.n_pop_eval", self.n_pop_eval, 0, MAX_EVAL)
        from topicdyn.probes import PROBES  # late: probes import config

        check(len(self.probes) > 0 and all(isinstance(n, str) for n in self.probes),
              "train.probes", "a non-empty list of probe names", self.probes)
        for n in self.probes:
            check(n in PROBES, "train.probes", "names from " + ", ".join(sorted(PROBES)), n)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "custom"

    def __post_init__(self):
        # the preset is a label that becomes part of a default run directory name
        check(isinstance(self.preset, str) and PRESET_LABEL.fullmatch(self.preset) is not None,
              "preset", "a label of letters, digits and . _ + - (at most 64, not starting with "
              "a dot)", self.preset)
        from topicdyn.probes.singh import ES_PROBES  # late: probes import config

        es = sorted(set(self.train.probes) & set(ES_PROBES))
        check(not es or self.data.source == "lda", "train.probes",
              "no embedding-space probe with data.source=corpus (their references need the "
              "generator)", ",".join(es))
        check(not es or self.mask.key_set == "unselected", "train.probes",
              "no embedding-space probe unless mask.key_set=unselected (their constructed "
              "contexts never make the query a key)", ",".join(es))
        from topicdyn.models import get_variant  # late: models import config

        variant = get_variant(self.model.name)  # imports package.module:attr names
        groups = "one of " + ", ".join(variant.groups)
        for name, gs in (("optim.group_lr", [g for g, _ in self.optim.group_lr]),
                         ("optim.freeze", self.optim.freeze),
                         ("optim.unfreeze_at", [g for g, _ in self.optim.unfreeze_at])):
            for g in gs:
                check(g in variant.groups, name,
                      f"group names of variant {self.model.name!r}: {groups}", g)
        variant.check_config(self)
        if self.model.impl == "fast":
            from topicdyn.models.kernels import select
            select(self)  # a one-line error naming the field no kernel is exact for
        n_vocab, d = self.data.n_vocab, self.d_model
        if self.model.embedding == "onehot":
            check(d >= n_vocab, "model.d_model",
                  f">= vocabulary size {n_vocab} for one-hot embeddings", d)
        if self.model.decoder == "identity":
            check(d >= n_vocab, "model.d_model",
                  f">= vocabulary size {n_vocab} for an identity decoder", d)
        check(d % self.model.n_heads == 0, "model.n_heads", f"a divisor of d_model={d}",
              self.model.n_heads)
        if self.model.value == "topic_block":
            check(d >= self.data.V, "model.d_model",
                  f">= number of content words {self.data.V} for a topic-block W^V", d)

    @property
    def d_model(self) -> int:
        return self.model.d_model if self.model.d_model is not None else self.data.n_vocab

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        from topicdyn.config.parse import build  # late: parse builds these classes

        return build(cls, d, "")


SECTIONS = {"data": DataConfig, "mask": MaskConfig, "model": ModelConfig, "optim": OptimConfig,
            "train": TrainConfig}
