"""The reduced model: block scalars -> the full model's matrices -> the population loss.

Regimes (one layer, one head, no positions/residual/LayerNorm, MLM, d_model = n_vocab):
    V: trained W^V            (one-hot E, uniform attention, identity decoder)
    E: trained E              (W^V = I, uniform attention, identity decoder)
    A: trained W^Q and W^K    (one-hot E, W^V = topic block, identity decoder)
Each trained matrix is block-symmetric (blocks.py); the fixed ones are the variant's own
constant initial values. The subspace is invariant under training on a symmetric loss: the
loss is unchanged under M -> P M P^T of every matrix at once (for W^Q, W^K: rows and head
columns permuted together; the product W^Q W^K^T is what the scores read), so its gradient at a
symmetric point is symmetric, and a coordinate-wise optimiser keeps the parameters symmetric.

The population loss is computed from sufficient statistics (theory/population.py): for every
(document, shown token) pair, attention = softmax_v(S[x, v] + log c[v]) over the key counts c,
logits = attention @ (E W^V W_dec), S = E W^Q W^K^T E^T / sqrt(d_head); CE or squared loss,
weighted by the pair's target counts, as the ratio E[sum of losses] / E[number of queries].
On a Monte Carlo sample the loss (and every predicted quantity) carries the sample's error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.config import Config
from topicdyn.models import get_variant
from topicdyn.theory.population import PopulationSample
from topicdyn.theory.reduced.blocks import BlockBasis, block_basis

TRAINED = {"V": ("WV",), "E": ("E",), "A": ("WQ", "WK")}
NEG = -1e30  # same key mask value as the models


def regime_of(cfg: Config) -> str | None:
    """"V", "E" or "A" when cfg is one of the reduced regimes (any preset name), else None."""
    m = cfg.model
    if (m.name != "attention" or m.n_layers != 1 or m.n_heads != 1 or m.residual
            or m.layernorm or m.positional != "none" or cfg.mask.objective != "mlm"
            or cfg.d_model != cfg.data.n_vocab or m.decoder != "identity"
            or cfg.optim.freeze or cfg.optim.grad_clip is not None):
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

    log_keys: jax.Array  # (P, n) log key counts of the pair's document (NEG where 0)
    token: jax.Array  # (P,) shown token
    targets: jax.Array  # (P, n) weighted target counts
    n_weight: jax.Array  # (P,) weighted number of queries
    doc: np.ndarray  # (P,) document of each pair (for cluster standard errors)


def pair_stats(sample: PopulationSample, n: int) -> PairStats:
    """Group the queries of a sample by (document, shown token)."""
    key = sample.q_doc.astype(np.int64) * n + sample.q_token
    uniq, inv = np.unique(key, return_inverse=True)
    doc, tok = uniq // n, uniq % n
    Y = np.zeros((len(uniq), n))
    np.add.at(Y, (inv, sample.q_target), sample.q_weight)
    kc = sample.key_counts[doc]
    logk = np.where(kc > 0, np.log(np.maximum(kc, 1e-300)), NEG)
    return PairStats(jnp.asarray(logk, jnp.float32), jnp.asarray(tok, jnp.int32),
                     jnp.asarray(Y, jnp.float32), jnp.asarray(Y.sum(1), jnp.float32), doc)


@dataclass(frozen=True)
class ReducedModel:
    """The reduced model of one config: its basis, trained matrix names and fixed matrices."""

    regime: str
    basis: BlockBasis
    trained: tuple[str, ...]  # parameter names of the trained matrices
    fixed: dict  # name -> (n, n) float32 fixed matrices (E, WV, W_dec; WQ = WK = 0 if uniform)
    loss: str  # "ce" | "squared"

    def matrices(self, theta: dict) -> dict:
        """{name: (K,)} -> {name: (n, n)} all four matrices E, WQ, WK, WV, W_dec."""
        out = dict(self.fixed)
        for name in self.trained:
            out[name] = self.basis.assemble(theta[name])
        return out

    def per_pair_loss(self, theta: dict, stats: PairStats) -> jax.Array:
        """(P,) weighted loss sums of every (document, shown token) pair."""
        m = self.matrices(theta)
        E = m["E"]
        S = (E @ m["WQ"]) @ (E @ m["WK"]).T / np.sqrt(E.shape[1])
        M = E @ m["WV"] @ m["W_dec"]
        attn = jax.nn.softmax(S[stats.token] + stats.log_keys, axis=-1)
        z = attn @ M
        if self.loss == "ce":  # sum over queries of logsumexp(z) - z[target]
            return stats.n_weight * jax.nn.logsumexp(z, -1) - jnp.sum(stats.targets * z, -1)
        # squared: sum over queries of |z|^2 - 2 z[target] + 1
        return stats.n_weight * (jnp.sum(z * z, -1) + 1.0) - 2.0 * jnp.sum(stats.targets * z, -1)

    def population_loss(self, theta: dict, stats: PairStats) -> jax.Array:
        """Scalar: E[sum of losses over queries] / E[number of queries] on the sample."""
        return jnp.sum(self.per_pair_loss(theta, stats)) / jnp.sum(stats.n_weight)

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
        raise ValueError("reduced dynamics: needs regime V, E or A (one layer, one head, no "
                         "positions/residual/LayerNorm, identity decoder, d_model = n_vocab, "
                         "MLM, no optim.freeze, no grad_clip)")
    basis = block_basis(cfg)
    p = get_variant(cfg.model.name).init(jax.random.PRNGKey(0), cfg)
    fixed = {n: jnp.asarray(_square(p[n]), jnp.float32) for n in ("E", "WQ", "WK", "WV", "W_dec")
             if n not in TRAINED[regime]}
    return ReducedModel(regime, basis, TRAINED[regime], fixed, cfg.model.loss)


def to_params(rm: ReducedModel, theta: dict, like: dict) -> dict:
    """Block scalars written into a full params tree shaped like `like` (the variant's)."""
    out = dict(like)
    for n in rm.trained:
        M = rm.basis.assemble(np.asarray(theta[n], np.float32))
        out[n] = jnp.asarray(M.reshape(np.shape(like[n])), jnp.float32)
    return out
