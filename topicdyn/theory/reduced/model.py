"""The reduced model: block scalars -> the full model's matrices -> the population loss.

Regimes (one layer, one head, no positions/residual/LayerNorm, MLM, d_model = n_vocab):
    V: trained W^V            (one-hot E, uniform attention, identity decoder)
    E: trained E              (W^V = I, uniform attention, identity decoder)
    A: trained W^Q and W^K    (one-hot E, W^V = topic block, identity decoder)
    F: all five trained       (E, W^Q, W^K, W^V, W_dec, each block-symmetric in the one-hot
                               basis of the hidden space: the group acts on the hidden index
                               by the same permutation, d_model = n_vocab)
Each trained matrix is block-symmetric (blocks.py); the fixed ones are the variant's own
constant initial values. The subspace is invariant under training on a symmetric loss: the
loss is unchanged under M -> P M P^T of every matrix at once (for W^Q, W^K: rows and head
columns permuted together; the product W^Q W^K^T is what the scores read), so its gradient at a
symmetric point is symmetric, and a coordinate-wise optimiser keeps the parameters symmetric.

The population loss is computed from sufficient statistics (theory/population.py): for every
(document, shown token) pair (V, E: every document), attention = softmax_v(S[x, v] + log c[v])
over the key counts c, logits = attention @ (E W^V W_dec), S = E W^Q W^K^T E^T / sqrt(d_head);
CE or squared loss, weighted by the pair's target counts, as the ratio E[sum of losses] /
E[number of queries]. On a Monte Carlo sample the loss (and every predicted quantity) carries
the sample's error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.config import Config
from topicdyn.models import get_variant
from topicdyn.theory.common import owner_topic
from topicdyn.theory.population import PopulationSample
from topicdyn.theory.reduced.blocks import BlockBasis, block_basis

TRAINED = {"V": ("WV",), "E": ("E",), "A": ("WQ", "WK"), "F": ("E", "WQ", "WK", "WV", "W_dec")}
NEG = -1e30  # same key mask value as the models


def regime_of(cfg: Config) -> str | None:
    """"V", "E", "A" or "F" when cfg is one of the reduced regimes (any preset name), else
    None."""
    m = cfg.model
    if (m.name != "attention" or m.n_layers != 1 or m.n_heads != 1 or m.residual
            or m.layernorm or m.positional != "none" or cfg.mask.objective != "mlm"
            or cfg.d_model != cfg.data.n_vocab or cfg.optim.freeze
            or cfg.optim.grad_clip is not None):
        return None
    if (m.attention == "trained" and m.embedding == "trained" and m.value == "trained"
            and m.decoder == "trained"):
        return "F"
    if m.decoder != "identity":
        return None
    if m.attention == "uniform" and m.embedding == "onehot" and m.value == "trained":
        return "V"
    if m.attention == "uniform" and m.embedding == "trained" and m.value == "identity":
        return "E"
    if m.attention == "trained" and m.embedding == "onehot" and m.value == "topic_block":
        return "A"
    return None


class PairStats(NamedTuple):
    """A PopulationSample grouped by (document, shown token): jnp arrays."""

    log_keys: jax.Array  # (D, n) log key counts of every document (NEG where 0)
    pair_doc: jax.Array  # (P,) document of each pair (int32)
    token: jax.Array  # (P,) shown token
    targets: jax.Array  # (P, n) weighted target counts
    n_weight: jax.Array  # (P,) weighted number of queries
    doc_targets: jax.Array  # (D, n) weighted target counts per document
    doc_n: jax.Array  # (D,) weighted number of queries per document
    x: jax.Array  # (D, V) content key frequencies xbar (uniform-attention regimes, else 0)
    x_topic: jax.Array  # (D, V) key mass of each word's own topic
    x_special: jax.Array  # (D, n - V) special key frequencies


def pair_stats(sample: PopulationSample, n: int, basis: BlockBasis | None = None) -> PairStats:
    """Group the queries of a sample by (document, shown token); basis: also the features of
    the uniform-attention regimes (whose logits are linear in the block scalars)."""
    key = sample.q_doc.astype(np.int64) * n + sample.q_token
    uniq, inv = np.unique(key, return_inverse=True)
    doc, tok = uniq // n, uniq % n
    Y = np.zeros((len(uniq), n))
    np.add.at(Y, (inv, sample.q_target), sample.q_weight)
    kc = sample.key_counts
    logk = np.where(kc > 0, np.log(np.maximum(kc, 1e-300)), NEG)
    D = sample.n_docs
    Yd = np.zeros((D, n))
    np.add.at(Yd, (sample.q_doc, sample.q_target), sample.q_weight)
    V = int((basis.classes[0] <= 2).sum()) if basis is not None else 0
    xbar = kc / np.maximum(kc.sum(1, keepdims=True), 1e-300)
    if basis is None:
        x = xt = xs = np.zeros((1, 1))
    else:
        same = basis.classes[:V, :V] <= 1  # diag or same topic
        x, xs = xbar[:, :V], xbar[:, V:]
        xt = x @ same
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return PairStats(f32(logk), jnp.asarray(doc, jnp.int32), jnp.asarray(tok, jnp.int32),
                     f32(Y), f32(Y.sum(1)), f32(Yd), f32(Yd.sum(1)), f32(x), f32(xt), f32(xs))


@dataclass(frozen=True)
class ReducedModel:
    """The reduced model of one config: its basis, trained matrix names and fixed matrices."""

    regime: str
    basis: BlockBasis
    trained: tuple[str, ...]  # parameter names of the trained matrices
    fixed: dict  # name -> (n, n) float32 fixed matrices (E, WV, W_dec; WQ = WK = 0 if uniform)
    loss: str  # "ce" | "squared"
    topic_onehot: np.ndarray  # (V, T) float32 topic of each content word

    def matrices(self, theta: dict) -> dict:
        """{name: (K,)} -> {name: (n, n)} all four matrices E, WQ, WK, WV, W_dec."""
        out = dict(self.fixed)
        for name in self.trained:
            out[name] = self.basis.assemble(theta[name])
        return out

    def _loss_sums(self, z, n, Y):
        if self.loss == "ce":  # sum over queries of logsumexp(z) - z[target]
            return n * jax.nn.logsumexp(z, -1) - jnp.sum(Y * z, -1)
        # squared: sum over queries of |z|^2 - 2 z[target] + 1
        return n * (jnp.sum(z * z, -1) + 1.0) - 2.0 * jnp.sum(Y * z, -1)

    def _linear_logits(self, th, x, x_topic, x_special) -> jax.Array:
        """(R, n) w @ W for weights w = [x (R, V), x_special (R, n - V)] and the block-symmetric
        W of scalars th, in O(n) per row (x_topic: each word's own-topic mass of x): content
        column j: (diag - same) x_j + (same - cross) x_topic_j + cross |x| + sum_s x_s from_s;
        special column t: to_t |x| + sum_s x_s (s->t)."""
        ix = {k: i for i, k in enumerate(self.basis.names)}
        ns = x_special.shape[1]
        sp = [k[len("to_"):] for k in self.basis.names if k.startswith("to_")]
        to = th[jnp.asarray([ix[f"to_{a}"] for a in sp])]
        frm = th[jnp.asarray([ix[f"from_{a}"] for a in sp])]
        ss = th[jnp.asarray([ix[f"{a}->{b}"] for a in sp for b in sp])].reshape(ns, ns)
        tot = jnp.sum(x, -1, keepdims=True)
        zc = ((th[ix["diag"]] - th[ix["same"]]) * x + (th[ix["same"]] - th[ix["cross"]]) * x_topic
              + th[ix["cross"]] * tot + (x_special @ frm)[:, None])
        zs = tot * to[None, :] + x_special @ ss
        return jnp.concatenate([zc, zs], -1)

    def per_doc_loss(self, theta: dict, stats: PairStats) -> jax.Array:
        """(D,) weighted loss sums of every document of the sample.

        V, E: one output per document (uniform attention ignores the query), and with the
        fixed matrices identities the logits are xbar @ W = feats @ theta (the trained
        matrix's block scalars). A: per (document, shown token) pair, attention over the key
        counts with the query's score row; sums over the pairs of a document."""
        if self.regime in ("V", "E"):
            z = self._linear_logits(theta[self.trained[0]], stats.x, stats.x_topic,
                                    stats.x_special)
            return self._loss_sums(z, stats.doc_n, stats.doc_targets)
        m = self.matrices(theta)
        E = m["E"]
        S = (E @ m["WQ"]) @ (E @ m["WK"]).T / np.sqrt(E.shape[1])
        M = E @ m["WV"] @ m["W_dec"]  # a product of block-symmetric matrices: block-symmetric
        cls = jnp.asarray(self.basis.classes.ravel())
        th_m = jax.ops.segment_sum(M.ravel(), cls, self.basis.K) / np.maximum(
            self.basis.counts, 1)
        a = jax.nn.softmax(S[stats.token] + stats.log_keys[stats.pair_doc], axis=-1)
        V, oh = self.topic_onehot.shape[0], jnp.asarray(self.topic_onehot)
        z = self._linear_logits(th_m, a[:, :V], (a[:, :V] @ oh) @ oh.T, a[:, V:])
        per = self._loss_sums(z, stats.n_weight, stats.targets)
        return jax.ops.segment_sum(per, stats.pair_doc, stats.log_keys.shape[0])

    def population_loss(self, theta: dict, stats: PairStats) -> jax.Array:
        """Scalar: E[sum of losses over queries] / E[number of queries] on the sample."""
        return jnp.sum(self.per_doc_loss(theta, stats)) / jnp.sum(stats.doc_n)

    def project(self, params: dict) -> dict:
        """Full params (the variant's tree) -> {name: (K,)} block scalars of the trained ones."""
        return {n: jnp.asarray(self.basis.project(_square(params[n])), jnp.float32)
                for n in self.trained}


def _square(x) -> np.ndarray:
    x = np.asarray(x)
    return x[0] if x.ndim == 3 else x  # (1, d, d) head-major attention weights -> (d, d)


def reduced_model(cfg: Config) -> ReducedModel:
    """The reduced model of a V, E or A config (ValueError for any other)."""
    regime = regime_of(cfg)
    if regime is None:
        raise ValueError("reduced dynamics: needs regime V, E, A or F (one layer, one head, "
                         "no positions/residual/LayerNorm, d_model = n_vocab, MLM, no "
                         "optim.freeze, no grad_clip)")
    basis = block_basis(cfg)
    p = get_variant(cfg.model.name).init(jax.random.PRNGKey(0), cfg)
    fixed = {n: jnp.asarray(_square(p[n]), jnp.float32) for n in ("E", "WQ", "WK", "WV", "W_dec")
             if n not in TRAINED[regime]}
    topic = owner_topic(cfg)
    onehot = (topic[:, None] == np.arange(cfg.data.T)[None, :]).astype(np.float32)
    return ReducedModel(regime, basis, TRAINED[regime], fixed, cfg.model.loss, onehot)


def to_params(rm: ReducedModel, theta: dict, like: dict) -> dict:
    """Block scalars written into a full params tree shaped like `like` (the variant's)."""
    out = dict(like)
    for n in rm.trained:
        M = rm.basis.assemble(np.asarray(theta[n], np.float32))
        out[n] = jnp.asarray(M.reshape(np.shape(like[n])), jnp.float32)
    return out
