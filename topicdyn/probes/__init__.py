"""Probes: pure functions run on checkpoints, vmapped over the seed axis.

A probe is registered by name and maps (params, params0, ctx) -> {stat: scalar} for one seed;
`run_probes` vmaps the selected probes over seeds and flattens to {"probe/stat": [per seed]}.
`ctx` (a ProbeContext) carries what the probes share: the config, a fixed evaluation set of
batches (the same for every checkpoint, so changes over time are not sampling noise), the word
topics, when the theory engine supports the config the Bayes log-probabilities on that set (both
floors: `bayes/query` given the visible words and the token shown at the query, `bayes/visible`
given the visible words only), the population-loss documents (probes/population.py) and the
authors' view of the evaluation documents (probes/reference_stat.py).

Values on the fixed evaluation set are named for it (`eval_loss`, `bayes_query`, ...); the
population estimate is `pop_loss` with its standard error `pop_loss_se`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.config import Config
from topicdyn.data import topic_labels, unigram
from topicdyn.masking import MLMBatch
from topicdyn.models import get_variant
from topicdyn.models.layers import query_key_mask
from topicdyn.models.variant import CAUSAL, MLM, VALUE_MAP
from topicdyn.probes import population as _population
from topicdyn.probes import reference_stat as _reference
from topicdyn.probes import vocab as _vocab
from topicdyn.probes.stats import attention_stats, block_stats, center_rows, stable_rank
from topicdyn.training import EVAL_STREAM, masked_loss
from topicdyn.xla import compile_options, device_array

PROBES: dict[str, Callable] = {}
REQUIRES: dict[str, frozenset[str]] = {}  # probe -> variant traits it relies on
SEPARATE: set[str] = set()  # probes compiled as programs of their own (see make_prober)
DEFAULT_PROBES = ("blocks", "attention", "loss", "dynamics")


def register(name: str, requires: tuple[str, ...] = (), separate: bool = False):
    """Register a probe fn(params, params0, ctx) -> {stat: scalar}; `requires`: the variant
    traits (topicdyn.models.variant) it relies on. A variant without them gets no such probe and
    the run reports it not applicable. separate: always jit it on its own (a large probe would
    slow the compilation of the shared vocabulary-space program)."""
    def deco(fn):
        PROBES[name] = fn
        REQUIRES[name] = frozenset(requires)
        if separate:
            SEPARATE.add(name)
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
    unigram: jnp.ndarray  # (n_vocab,) marginal word distribution (0 on specials)
    bayes_logp: jnp.ndarray | None  # (B, L, n_vocab) floor bayes/query (causal: the prefix)
    bayes_visible_logp: jnp.ndarray | None = None  # (B, L, n_vocab) floor bayes/visible (MLM)
    vocab: dict | None = None  # constants of the vocabulary-space probes (probes/vocab.py)
    pop: dict | None = None  # population-loss documents (probes/population.py)
    ref: dict | None = None  # the authors' view of the eval documents (probes/reference_stat)
    es: dict | None = None  # constants of the embedding-space probes (probes/singh_setup.py)


def eval_batch(cfg: Config) -> MLMBatch:
    """The run's fixed evaluation documents: train.n_eval documents from its eval stream,
    identical at every checkpoint and for the eval-set theory values (verdicts); for a corpus,
    windows of its held-out articles (population.stream_documents: cached)."""
    return jax.tree.map(device_array,
                        _population.stream_documents(cfg, EVAL_STREAM, cfg.train.n_eval))


def make_context(cfg: Config, with_bayes: bool = True,
                 vocab_probes: bool = True, names=None) -> ProbeContext:
    """The evaluation set is drawn from the run's eval stream: identical at every checkpoint.
    vocab_probes: compute the attention and loss probes in vocabulary space where the fast
    kernel is exact for the config (probes/vocab.py: the same numbers, a small fraction of the
    cost). names: the probes to be run (default cfg.train.probes); the embedding-space
    constants are built only when one of them needs them."""
    batch = eval_batch(cfg)
    wt = topic_labels(cfg.data)
    V, nv = cfg.data.V, cfg.data.n_vocab
    labels = np.full(nv, -1)
    labels[:V] = wt
    uni = np.zeros(nv)
    uni[:V] = unigram(cfg.data)
    bayes = visible = None
    if with_bayes and get_variant(cfg.model.name).traits(cfg) & {MLM, CAUSAL}:
        try:
            from topicdyn.theory import bayes_log_prob
            bayes = device_array(bayes_log_prob(cfg, batch), np.float32)
            if cfg.mask.objective != "causal":
                visible = device_array(bayes_log_prob(cfg, batch, use_query_token=False),
                                       np.float32)
        except (ImportError, NotImplementedError):
            bayes = visible = None
    vc = _vocab.prepare(cfg, batch, labels, bayes, visible) if vocab_probes else None
    ref = None
    if _reference.applies(cfg):
        rb, theirs = _reference.reference_batch(cfg, batch), _reference.reference_labels(cfg)
        ref = {"batch": jax.tree.map(device_array, rb), "labels": device_array(theirs),
               "labels_fixed": device_array(labels)}  # the correct topics (specials -1)
        if vc is not None:  # the vocabulary-space form, read where the vocab probes run
            ref["rows"] = _reference.prepare_rows(cfg, rb, theirs, labels)
    es = None
    from topicdyn.probes.singh import ES_PROBES
    if set(names or cfg.train.probes) & set(ES_PROBES) and cfg.mask.objective == "mlm":
        from topicdyn.probes.singh_setup import prepare as es_prepare
        es = {k: (jax.tree.map(device_array, v) if isinstance(v, (MLMBatch, np.ndarray)) else v)
              for k, v in es_prepare(cfg, jax.device_get(batch), visible).items()}
    return ProbeContext(cfg, batch, wt, device_array(labels), device_array(uni / uni.sum()),
                        bayes, visible, vc, _population.prepare(cfg), ref, es)


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
    """Topic bias of attention on the eval set with correct labels (queries: positions showing
    a content word: unselected, kept or random-content), and the authors' statistic emulated
    exactly (ref_*: their protocol and labelling; ref_ratio_fixed: their protocol, correct
    labels; probes/reference_stat.py)."""
    out = (_vocab.probe_attention(params, ctx) if ctx.vocab is not None
           else probe_attention_generic(params, params0, ctx))
    if ctx.ref is not None:
        if ctx.vocab is not None and ctx.ref.get("rows") is not None:
            out.update(_reference.probe_reference_rows(params, ctx.cfg, ctx.ref["rows"]))
        else:
            out.update(_reference.probe_reference(params, ctx.cfg, ctx.ref,
                                                  get_variant(ctx.cfg.model.name)))
    return out


def probe_attention_generic(params, params0, ctx: ProbeContext) -> dict:
    """probe_attention's correct-label statistics from the model's full attention matrices
    (the definition)."""
    cfg, b = ctx.cfg, ctx.batch
    _, acts = get_variant(cfg.model.name).apply(params, b, cfg, capture=True)
    q_ok = b.valid & (b.inputs < cfg.data.V)
    keys = query_key_mask(b.key_mask, cfg.mask.objective)  # (B, L, L) keys of each query
    out = {}
    for name in sorted(k for k in acts if k.startswith("attention")):
        layer = name[len("attention"):]  # "" for layer 1, "_l2", ...
        s = attention_stats(acts[name], b.inputs, b.inputs, keys, q_ok, ctx.labels)
        out.update({f"{k}{layer}": v for k, v in s.items()})
    return out


@register("loss")
def probe_loss(params, params0, ctx: ProbeContext) -> dict:
    """Loss on the eval set (`eval_loss`; the floors on the same positions: `bayes_query`,
    `bayes_visible`, causal: `bayes_prefix`), KL(reference || model) at selected positions for
    the uniform (content words), unigram and Bayes/query predictors, and the population
    estimate `pop_loss` ± `pop_loss_se`, split by query kind (`pop_loss_mask` / `_keep` /
    `_random`)."""
    out = (_vocab.probe_loss(params, ctx) if ctx.vocab is not None
           else probe_loss_generic(params, params0, ctx))
    if ctx.pop is not None:
        out.update(_population.pop_loss(params, ctx.cfg, ctx.pop))
    return out


def floor_names(cfg: Config) -> tuple[str, ...]:
    """Eval-set floor stats of the loss probe for cfg's objective (probe names, no prefix)."""
    return ("bayes_prefix",) if cfg.mask.objective == "causal" else ("bayes_query",
                                                                      "bayes_visible")


def floor_values(logp, targets, sel) -> jnp.ndarray:
    """Mean of -log p(target) over selected positions; logp (B, L, nv) or rows (R, nv)."""
    bl = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return jnp.sum(jnp.where(sel, bl, 0.0)) / jnp.maximum(jnp.sum(sel), 1)


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
        names = floor_names(cfg)
        for name, lp in zip(names, (ctx.bayes_logp, ctx.bayes_visible_logp)):
            if lp is not None:
                out[name] = floor_values(lp, b.targets, sel)
    return out


# separate: its stable ranks are a host callback, and a program with one is never kept in the
# persistent compilation cache; alone it is small to recompile, and the others' stay cached
@register("dynamics", separate=True)
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


def _split(d: dict | None):
    """(arrays, static) parts of a context dict: names, flags and sizes stay out of the jit
    arguments."""
    if d is None:
        return None, None
    static = {k: v for k, v in d.items() if isinstance(v, (bool, int, str, list, tuple))
              and not isinstance(v, MLMBatch)}
    return {k: v for k, v in d.items() if k not in static}, static


def make_prober(ctx: ProbeContext, names=DEFAULT_PROBES):
    """(params, params0) -> {"probe/stat": (n_seeds,)} for the selected probes.

    The context's arrays are arguments, not constants baked into the programs: XLA would
    otherwise fold the probes' count and table computations on them at compile time (slower to
    compile than to run). With the generic (full-sequence) probes each probe is jitted and
    vmapped on its own: XLA's CPU compile time grows much faster than linearly when they share
    one program (minutes instead of seconds); the vocabulary-space probes are small and share
    one.
    """
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        from topicdyn.config import ConfigError
        raise ConfigError(f"probes: unknown {unknown}; allowed: {', '.join(sorted(PROBES))}")
    names = [n for n in names if n not in not_applicable(ctx.cfg, names)]
    parts = {k: _split(getattr(ctx, k)) for k in ("vocab", "pop", "ref", "es")}
    arrays = {"batch": ctx.batch, "unigram": ctx.unigram, "labels": ctx.labels,
              "bayes_logp": ctx.bayes_logp, "bayes_visible_logp": ctx.bayes_visible_logp,
              **{k: a for k, (a, _) in parts.items()}}

    def context(a):
        return dataclasses.replace(ctx, **{k: v for k, v in a.items() if k not in parts},
                                   **{k: None if a[k] is None else {**a[k], **st}
                                      for k, (_, st) in parts.items()})

    def program(probe_names):
        def probes(p, p0, a):
            c = context(a)
            return {f"{n}/{k}": v for n in probe_names for k, v in PROBES[n](p, p0, c).items()}
        if jax.default_backend() == "cpu":
            # one seed after another: vmapped, the scatters and gathers of the row sums over
            # a shared index become batched ones, which XLA:CPU runs 2-3x slower
            def over_seeds(P, P0, a):
                return jax.lax.map(lambda pp: probes(pp[0], pp[1], a), (P, P0))
        else:
            over_seeds = jax.vmap(probes, in_axes=(0, 0, None))
        return jax.jit(over_seeds, compiler_options=compile_options())

    shared = [n for n in names if n not in SEPARATE] if ctx.vocab is not None else []
    fns = ([program(shared)] if shared else []) + [program([n]) for n in names
                                                    if n not in shared]

    def run(params, params0):
        out = {}
        for fn in fns:
            out.update(fn(params, params0, arrays))
        return out

    return run


from topicdyn.probes import singh as _singh  # noqa: E402,F401  (registers the embedding-space probes)
from topicdyn.probes import permuted as _permuted  # noqa: E402,F401  (the label-permutation baseline)
from topicdyn.probes import symmetry as _symmetry  # noqa: E402,F401  (deviation from the block-symmetric subspace, opt-in)
