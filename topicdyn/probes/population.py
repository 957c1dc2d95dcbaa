"""The model's population loss: an estimate on train.n_pop_eval fresh documents, with its error.

The fixed evaluation set (train.n_eval documents, 80 by default) is good for following one run
over time (every checkpoint sees the same documents), but its loss differs from the model's
population loss by document sampling: about 0.05 nats at 80 documents. Claims that compare a
measured loss with a population prediction read this estimate instead: the mean loss over the
selected positions of n_pop_eval documents of their own stream (POP_EVAL_STREAM), a ratio
estimator with documents as iid clusters, and its standard error

    se = sqrt(D / (D - 1) * sum_d (num_d - r den_d)^2) / sum_d den_d,

num_d, den_d: summed loss and number of selected positions of document d. The loss is split by
what the query shows ([MASK] / its own word / a random word).

Two implementations: where the bag-of-words formulation is exact (models/fast.py) the selected
positions are grouped into (document, shown token, kind) rows whose logits are computed once;
otherwise the variant's own apply runs over chunks of documents.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.config import Config
from topicdyn.data import eval_data
from topicdyn.masking import QUERY_KINDS, MLMBatch, sample_batch
from topicdyn.models import get_variant
from topicdyn.models.fast import fast_supported, row_logits, vocab_tables
from topicdyn.probes.stats import doc_token_counts
from topicdyn.theory.cache import memoized
from topicdyn.training import POP_EVAL_STREAM, stream_key
from topicdyn.xla import compile_options, device_array

KINDS = tuple(QUERY_KINDS.items())
CHUNK_DOCS = 100  # generic path: documents per forward pass


def stream_documents(cfg: Config, stream: int, n: int):
    """n documents of the run's stream `stream` (numpy MLMBatch, read-only), e.g. the fixed
    evaluation set or the population sample. Generated documents are kept in the theory's
    content-keyed cache: a run's probes, verdicts and figures, and the next run of the config,
    sample them once."""
    if cfg.data.source == "lda":
        return _lda_documents(cfg, stream, cfg.train.seed, n)
    return _sample(cfg, stream, cfg.train.seed, n)


def _sample(cfg: Config, stream: int, seed: int, n: int):
    return jax.device_get(jax.jit(sample_batch, static_argnums=(1, 2, 3),
                                  compiler_options=compile_options())(
        stream_key(seed, stream), eval_data(cfg.data), cfg.mask, n))


@memoized(("data", "mask"))
def _lda_documents(cfg: Config, stream: int, seed: int, n: int):
    return _sample(cfg, stream, seed, n)


def pop_batch(cfg: Config):
    """The n_pop_eval documents (numpy MLMBatch, read-only), drawn from the population-eval
    stream."""
    return stream_documents(cfg, POP_EVAL_STREAM, cfg.train.n_pop_eval)


def uniform_attention(cfg: Config) -> bool:
    """Whether the variant's attention is uniform over the keys whatever its parameters (its
    UNIFORM_ATTENTION trait): the bag-of-words rows then pool once per document."""
    from topicdyn.models.variant import UNIFORM_ATTENTION

    return UNIFORM_ATTENTION in get_variant(cfg.model.name).traits(cfg)


def prepare(cfg: Config) -> dict | None:
    """Arrays of the population estimate (None when train.n_pop_eval = 0 or the objective has
    no selected positions to score)."""
    if cfg.train.n_pop_eval == 0:
        return None
    b = pop_batch(cfg)
    sel = np.asarray(b.selected)
    if not sel.any():
        return None
    kind = np.asarray(b.kind)
    if fast_supported(cfg):
        d, pos = np.nonzero(sel)
        x, y, k = np.asarray(b.inputs)[d, pos], np.asarray(b.targets)[d, pos], kind[d, pos]
        keys, inv = np.unique(np.stack([d, x, k], 1), axis=0, return_inverse=True)
        counts = np.zeros((len(keys), cfg.data.n_vocab), np.float32)
        np.add.at(counts, (inv.reshape(-1), y), 1.0)
        # the documents' key counts are fixed: counted once here, not at every checkpoint
        return {"rows": True, "uniform": uniform_attention(cfg),
                "key_counts": device_array(doc_token_counts(b.inputs, b.key_mask,
                                                           cfg.data.n_vocab), np.float32),
                "row_doc": device_array(keys[:, 0], np.int32),
                "row_x": device_array(keys[:, 1], np.int32),
                "row_kind": device_array(keys[:, 2], np.int32),
                "row_counts": device_array(counts)}
    D, C = sel.shape[0], CHUNK_DOCS
    pad = -D % C  # padded documents have no selected position: they add nothing

    def chunks(a, fill):
        a = np.asarray(a)
        a = np.concatenate([a, np.full((pad,) + a.shape[1:], fill, a.dtype)])
        return jnp.asarray(a.reshape((-1, C) + a.shape[1:]))
    fields = {f: chunks(getattr(b, f), 0) for f in b._fields}
    return {"rows": False, "n_docs": D, "batch": fields}


def _estimate(num, den, kind_num, kind_den) -> dict:
    """Ratio estimator over documents: num, den (D,); kind_* (K, D)."""
    D = num.shape[0]
    r = jnp.sum(num) / jnp.maximum(jnp.sum(den), 1.0)
    resid = num - r * den
    se = jnp.sqrt(D / max(D - 1, 1) * jnp.sum(resid ** 2)) / jnp.maximum(jnp.sum(den), 1.0)
    out = {"pop_loss": r, "pop_loss_se": se}
    for i, (name, _) in enumerate(KINDS):
        out[f"pop_loss_{name}"] = jnp.sum(kind_num[i]) / jnp.maximum(jnp.sum(kind_den[i]), 1.0)
    return out


def _loss_against(logits, cfg: Config):
    """(n, nv) logits -> (n, nv) loss of each row against every target."""
    if cfg.model.loss == "ce":
        return jax.nn.logsumexp(logits, axis=-1, keepdims=True) - logits
    return jnp.sum(logits ** 2, axis=-1, keepdims=True) - 2.0 * logits + 1.0


def pop_loss(params, cfg: Config, pop: dict) -> dict:
    """{pop_loss, pop_loss_se, pop_loss_mask, pop_loss_keep, pop_loss_random} for one seed."""
    if pop["rows"]:
        tables, data = vocab_tables(params, None, cfg, counts=pop["key_counts"],
                                    uniform=pop["uniform"])
        logits = row_logits(tables, data, pop["row_doc"], pop["row_x"], cfg)
        cnt = pop["row_counts"]
        per_row = jnp.sum(cnt * _loss_against(logits, cfg), -1)
        n_row = jnp.sum(cnt, -1)
        D = pop["key_counts"].shape[0]
        seg = lambda v: jax.ops.segment_sum(v, pop["row_doc"], num_segments=D)
        kn = jnp.stack([seg(jnp.where(pop["row_kind"] == k, per_row, 0.0)) for _, k in KINDS])
        kd = jnp.stack([seg(jnp.where(pop["row_kind"] == k, n_row, 0.0)) for _, k in KINDS])
        return _estimate(seg(per_row), seg(n_row), kn, kd)
    variant = get_variant(cfg.model.name)

    def chunk(fields):
        b = MLMBatch(**fields)
        logits, _ = variant.apply(params, b, cfg)
        per = jnp.take_along_axis(_loss_against(logits, cfg), b.targets[..., None], -1)[..., 0]
        s = b.selected.astype(per.dtype)
        ks = jnp.stack([s * (b.kind == k) for _, k in KINDS])  # (K, C, L)
        return (jnp.sum(per * s, -1), jnp.sum(s, -1), jnp.sum(ks * per, -1), jnp.sum(ks, -1))

    num, den, kn, kd = jax.lax.map(chunk, pop["batch"])
    D = pop["n_docs"]
    flat = lambda a: a.reshape(-1)[:D]
    kflat = lambda a: jnp.moveaxis(a, 1, 0).reshape(len(KINDS), -1)[:, :D]
    return _estimate(flat(num), flat(den), kflat(kn), kflat(kd))
