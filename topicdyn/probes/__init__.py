"""Probes: pure functions run on checkpoints, vmapped over the seed axis.

A probe is registered by name and maps (params, params0, ctx) -> {stat: scalar} for one seed;
`run_probes` vmaps the selected probes over seeds and flattens to {"probe/stat": [per seed]}.
`ctx` (a ProbeContext) carries what the probes share: the config, a fixed evaluation set of
batches (the same for every checkpoint, so changes over time are not sampling noise), the word
topics and, when the theory engine supports the config, the Bayes log-probabilities on that set.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.config import Config
from topicdyn.data import topic_word_matrix, word_topic
from topicdyn.masking import MLMBatch, sample_batch
from topicdyn.models import get_variant
from topicdyn.models.layers import query_key_mask
from topicdyn.models.variant import CAUSAL, MLM, VALUE_MAP
from topicdyn.probes import vocab as _vocab
from topicdyn.probes.stats import (attention_stats, block_stats, center_rows,
                                   reference_topic_labels, stable_rank)
from topicdyn.training import EVAL_STREAM, masked_loss, stream_key
from topicdyn.xla import compile_options

PROBES: dict[str, Callable] = {}
REQUIRES: dict[str, frozenset[str]] = {}  # probe -> variant traits it relies on
DEFAULT_PROBES = ("blocks", "attention", "loss", "dynamics")


def register(name: str, requires: tuple[str, ...] = ()):
    """Register a probe fn(params, params0, ctx) -> {stat: scalar}; `requires`: the variant
    traits (topicdyn.models.variant) it relies on. A variant without them gets no such probe and
    the run reports it not applicable."""
    def deco(fn):
        PROBES[name] = fn
        REQUIRES[name] = frozenset(requires)
        return fn
    return deco


def not_applicable(cfg: Config, names=DEFAULT_PROBES) -> dict[str, str]:
    """{probe: reason} for the probes whose required traits cfg's variant lacks."""
    traits = get_variant(cfg.model.name).traits(cfg)
    return {n: "needs " + ", ".join(sorted(REQUIRES[n] - traits))
            for n in names if n in REQUIRES and not REQUIRES[n] <= traits}


@dataclass(frozen=True)
class ProbeContext:
    cfg: Config
    batch: MLMBatch  # evaluation documents (train.n_eval docs in one batch)
    word_topic: np.ndarray  # (V,)
    labels: jnp.ndarray  # (n_vocab,) correct topic per token id, -1 for specials
    ref_labels: jnp.ndarray  # (n_vocab,) the reference code's (buggy) labelling
    unigram: jnp.ndarray  # (n_vocab,) marginal word distribution (0 on specials)
    bayes_logp: jnp.ndarray | None  # (B, L, n_vocab) Bayes-optimal log P(word | visible)
    vocab: dict | None = None  # constants of the vocabulary-space probes (probes/vocab.py)


def eval_batch(cfg: Config) -> MLMBatch:
    """The run's fixed evaluation documents: train.n_eval documents from its eval stream,
    identical at every checkpoint and for the eval-set theory values (verdicts)."""
    return jax.jit(sample_batch, static_argnums=(1, 2, 3), compiler_options=compile_options())(
        stream_key(cfg.train.seed, EVAL_STREAM), cfg.data, cfg.mask, cfg.train.n_eval)


def make_context(cfg: Config, with_bayes: bool = True,
                 vocab_probes: bool = True) -> ProbeContext:
    """The evaluation set is drawn from the run's eval stream: identical at every checkpoint.
    vocab_probes: compute the attention and loss probes in vocabulary space where the fast
    kernel is exact for the config (probes/vocab.py: the same numbers, a small fraction of the
    cost)."""
    batch = eval_batch(cfg)
    wt = word_topic(cfg.data)
    V, nv = cfg.data.V, cfg.data.n_vocab
    labels = np.full(nv, -1)
    labels[:V] = wt
    uni = np.zeros(nv)
    uni[:V] = topic_word_matrix(cfg.data).mean(0)  # symmetric prior: E[theta_t] = 1/T
    bayes = None
    if with_bayes and get_variant(cfg.model.name).traits(cfg) & {MLM, CAUSAL}:
        try:
            from topicdyn.theory import bayes_log_prob
            bayes = jnp.asarray(bayes_log_prob(cfg, batch), jnp.float32)
        except (ImportError, NotImplementedError):
            bayes = None
    ref = reference_topic_labels(V, cfg.data.v)
    vc = _vocab.prepare(cfg, batch, labels, ref, bayes) if vocab_probes else None
    return ProbeContext(cfg, batch, wt, jnp.asarray(labels), jnp.asarray(ref),
                        jnp.asarray(uni / uni.sum()), bayes, vc)


def _layer_tag(key: str) -> str:
    """"value_map/1" -> "" (layer 1 keeps the historical stat names), "value_map/2" -> "_l2"."""
    layer = int(key.rsplit("/", 1)[1])
    return "" if layer == 1 else f"_l{layer}"


@register("blocks", requires=(VALUE_MAP,))
def probe_blocks(params, params0, ctx: ProbeContext) -> dict:
    """Block statistics of the embedding Gram, the value map and the score map (vocab space),
    per layer (layers >= 2 read through the embedding: stat names value_l2_*, score_l2_*)."""
    V = ctx.cfg.data.V
    mats = get_variant(ctx.cfg.model.name).matrices(params, ctx.cfg)
    out = {}
    if "E" in mats:
        E = mats["E"]
        Ec = center_rows(E, V) if ctx.cfg.model.embedding == "trained" else E
        out.update({f"gram_{k}": v for k, v in block_stats(Ec @ Ec.T, ctx.word_topic).items()})
    for key, M in mats.items():
        if key.startswith(("value_map/", "score_map/")):
            kind = key.split("_", 1)[0]  # "value" | "score"
            tag = _layer_tag(key)
            out.update({f"{kind}{tag}_{k}": v for k, v in
                        block_stats(center_rows(M, V), ctx.word_topic).items()})
    return out


@register("attention")
def probe_attention(params, params0, ctx: ProbeContext) -> dict:
    """Topic bias of attention on the eval set, correct labels and the reference's labelling.
    Queries: positions showing a content word (unselected, kept or random-content)."""
    if ctx.vocab is not None:
        return _vocab.probe_attention(params, ctx)
    return probe_attention_generic(params, params0, ctx)


def probe_attention_generic(params, params0, ctx: ProbeContext) -> dict:
    """probe_attention from the model's full attention matrices (the definition)."""
    cfg, b = ctx.cfg, ctx.batch
    _, acts = get_variant(cfg.model.name).apply(params, b, cfg, capture=True)
    q_ok = b.valid & (b.inputs < cfg.data.V)
    keys = query_key_mask(b.key_mask, cfg.mask.objective)  # (B, L, L) keys of each query
    out = {}
    for name in sorted(k for k in acts if k.startswith("attention")):
        layer = name[len("attention"):]  # "" for layer 1, "_l2", ...
        for tag, lab in (("", ctx.labels), ("ref_", ctx.ref_labels)):
            s = attention_stats(acts[name], b.inputs, b.inputs, keys, q_ok, lab)
            out.update({f"{tag}{k}{layer}": v for k, v in s.items()})
    return out


@register("loss")
def probe_loss(params, params0, ctx: ProbeContext) -> dict:
    """Loss on the eval set and KL(reference || model) at selected positions for the uniform
    (content words), unigram and Bayes-optimal predictors."""
    if ctx.vocab is not None:
        return _vocab.probe_loss(params, ctx)
    return probe_loss_generic(params, params0, ctx)


def probe_loss_generic(params, params0, ctx: ProbeContext) -> dict:
    """probe_loss from the model's logits at every position (the definition)."""
    cfg, b = ctx.cfg, ctx.batch
    logits, _ = get_variant(cfg.model.name).apply(params, b, cfg)
    out = {"eval_loss": masked_loss(logits, b, cfg)}
    logp = jax.nn.log_softmax(logits, axis=-1)
    sel = b.selected
    n = jnp.maximum(jnp.sum(sel), 1)
    V, nv = cfg.data.V, cfg.data.n_vocab
    uniform = jnp.where(jnp.arange(nv) < V, 1.0 / V, 0.0)

    def kl_from(q):  # q: (..., nv) reference probabilities
        t = jnp.where(q > 0, q * (jnp.log(jnp.where(q > 0, q, 1.0)) - logp), 0.0)
        return jnp.sum(jnp.where(sel, jnp.sum(t, -1), 0.0)) / n

    out["kl_uniform"] = kl_from(uniform)
    out["kl_unigram"] = kl_from(ctx.unigram)
    if ctx.bayes_logp is not None:
        out["kl_bayes"] = kl_from(jnp.exp(ctx.bayes_logp))
        bl = -jnp.take_along_axis(ctx.bayes_logp, b.targets[..., None], -1)[..., 0]
        out["bayes_loss"] = jnp.sum(jnp.where(sel, bl, 0.0)) / n
    return out


@register("dynamics")
def probe_dynamics(params, params0, ctx: ProbeContext) -> dict:
    """||W_t - W_0||_F per tracked matrix (Variant.tracked), and stable ranks of the changes of
    each layer's W^V and W^Q W^K^T."""
    variant = get_variant(ctx.cfg.model.name)
    now, then = variant.tracked(params, ctx.cfg), variant.tracked(params0, ctx.cfg)
    out = {}
    for name in now:
        out[f"delta_{name}"] = jnp.sqrt(jnp.sum((now[name] - then[name]) ** 2))
        if name.startswith("WV"):
            H, d, dh = now[name].shape
            dv = jnp.transpose(now[name] - then[name], (1, 0, 2)).reshape(d, H * dh)
            out[f"srank_d{name}"] = stable_rank(dv)
        elif name.startswith("QK"):
            out[f"srank_d{name}"] = stable_rank(now[name] - then[name])
    return out


def make_prober(ctx: ProbeContext, names=DEFAULT_PROBES):
    """(params, params0) -> {"probe/stat": (n_seeds,)} for the selected probes.

    With the generic (full-sequence) probes each probe is jitted and vmapped on its own: XLA's
    CPU compile time grows much faster than linearly when they share one program (minutes
    instead of seconds).
    """
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        from topicdyn.config import ConfigError
        raise ConfigError(f"probes: unknown {unknown}; allowed: {', '.join(sorted(PROBES))}")
    names = [n for n in names if n not in not_applicable(ctx.cfg, names)]
    if ctx.vocab is None:
        fns = {n: jax.jit(jax.vmap(lambda p, p0, n=n: PROBES[n](p, p0, ctx)),
                           compiler_options=compile_options()) for n in names}

        def run(params, params0):
            out = {}
            for n, fn in fns.items():
                out.update({f"{n}/{k}": v for k, v in fn(params, params0).items()})
            return out

        return run

    # vocabulary-space probes are small: one program for all. The evaluation-set arrays are
    # arguments, not constants baked into the program: XLA would otherwise fold the probes'
    # count and table computations on them at compile time (slower to compile than to run)
    static = {k: v for k, v in ctx.vocab.items() if not isinstance(v, jax.Array)}
    arrays = {"batch": ctx.batch, "unigram": ctx.unigram,
              "vocab": {k: v for k, v in ctx.vocab.items() if k not in static}}

    def all_probes(p, p0, a):
        c = dataclasses.replace(ctx, batch=a["batch"], unigram=a["unigram"],
                                vocab={**a["vocab"], **static})
        return {f"{n}/{k}": v for n in names for k, v in PROBES[n](p, p0, c).items()}

    fn = jax.jit(jax.vmap(all_probes, in_axes=(0, 0, None)), compiler_options=compile_options())
    return lambda params, params0: fn(params, params0, arrays)

