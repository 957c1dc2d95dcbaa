"""Finite-batch Adam on the reduced model: a mean-field approximation (regimes V and E).

Adam divides by the root of the second moment v of each entry's *batch* gradient, which holds
the gradient's variance: a finite batch slows every entry down (a lag that the population
trajectory misses, docs/REDUCTION.md). Here each orbit's entries get the mean mu (the
population per-entry gradient) and the variance sigma^2 of a batch-mean gradient of B
documents, averaged over the orbit, and Adam is run on the moments:

    m <- b1 m + (1 - b1) mu,    v <- b2 v + (1 - b2) (mu^2 + sigma^2),
    update = -lr_t m_hat / (sqrt(v_hat) + eps)     (+ AdamW's decay),

i.e. E[m / sqrt(v)] ~ E[m] / sqrt(E[v]): an approximation (at step 1 it gives
mu / sqrt(mu^2 + sigma^2) where the exact mean is erf(mu / (sigma sqrt 2))), labelled as such.

Moments (delta method for the ratio loss sum_d l_d / sum_d q_d over the batch's documents d):
with G^d = x_d r_d^T the gradient of document d's summed query losses w.r.t. W (uniform
attention: logits x_d W; r_d = q_d softmax(z_d) - y_d for CE, 2 (q_d z_d - y_d) squared),
    sigma^2_k = (S2_k - 2 mu_k C_k + |k| mu_k^2 E[q^2]) / (|k| B E[q]^2),
    S2_k = E sum_{ij in k} (G^d_ij)^2,  C_k = E q_d sum_{ij in k} G^d_ij,
where the orbit sums are vector-Jacobian products of the (linear) block logits map with x^2 and
r^2 in place of x and r. Documents are the sample's (equal weights: Monte Carlo samples only).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.theory.reduced.model import PairStats, ReducedModel


class SquareStats(NamedTuple):
    x2: jax.Array  # (D, V) squared content key frequencies
    x2_topic: jax.Array  # (D, V) own-topic sums of x2
    x2_special: jax.Array  # (D, n - V)


def square_stats(rm: ReducedModel, stats: PairStats) -> SquareStats:
    """The squared key frequencies the variance needs (computed once)."""
    oh = jnp.asarray(rm.topic_onehot)
    x2 = stats.x ** 2
    return SquareStats(x2, (x2 @ oh) @ oh.T, stats.x_special ** 2)


def _orbit_sums(rm: ReducedModel, cot, x, xt, xs) -> jax.Array:
    """(K,) sum over each orbit of sum_d x_d[i] cot_d[j] (the block logits map is linear)."""
    f = lambda th: jnp.sum(cot * rm._linear_logits(th, x, xt, xs))  # noqa: E731
    return jax.grad(f)(jnp.zeros(rm.basis.K, jnp.float32))


def entry_moments(rm: ReducedModel, th, stats: PairStats, sq: SquareStats, batch: int):
    """(mu (K,), sigma^2 (K,)): mean and variance of one entry's batch gradient, per orbit."""
    z = rm._linear_logits(th, stats.x, stats.x_topic, stats.x_special)
    q = stats.doc_n
    if rm.loss == "ce":
        r = q[:, None] * jax.nn.softmax(z, -1) - stats.doc_targets
    else:
        r = 2.0 * (q[:, None] * z - stats.doc_targets)
    D = q.shape[0]
    cnt = jnp.asarray(np.maximum(rm.basis.counts, 1.0), jnp.float32)
    qbar, q2 = jnp.mean(q), jnp.mean(q * q)
    tot = _orbit_sums(rm, r, stats.x, stats.x_topic, stats.x_special) / D
    C = _orbit_sums(rm, q[:, None] * r, stats.x, stats.x_topic, stats.x_special) / D
    S2 = _orbit_sums(rm, r * r, sq.x2, sq.x2_topic, sq.x2_special) / D
    mu = tot / (cnt * qbar)
    var = (S2 - 2.0 * mu * C + cnt * mu * mu * q2) / (cnt * batch * qbar * qbar)
    return mu, jnp.maximum(var, 0.0)


def meanfield_supported(cfg, rm: ReducedModel) -> str | None:
    """None if the mean-field finite-batch Adam applies to cfg, else why not."""
    o = cfg.optim
    if rm.regime not in ("V", "E"):
        return "the finite-batch moments are derived for uniform attention (V, E) only"
    if o.name not in ("adam", "adamw"):
        return "SGD is linear in the gradient: its mean trajectory is the population one"
    if o.group_lr or o.unfreeze_at:
        return "group learning rates / unfreezing are not in the mean-field optimiser"
    return None


def meanfield_descent(rm: ReducedModel, cfg, steps: int, batch: float):
    """jit((theta0 {name: (K,)}, stats, sq) -> (losses (S+1,), {name: (S+1, K)})): Adam on the
    moments (module doc); batch = inf gives the population trajectory (sigma = 0)."""
    from topicdyn.training import lr_schedule

    o, sched, name = cfg.optim, lr_schedule(cfg), rm.trained[0]
    wd = o.weight_decay if o.name == "adamw" else 0.0

    def run(theta0, stats, sq):
        def step(carry, t):
            th, m, v = carry
            loss = rm.population_loss({name: th}, stats)
            mu, var = entry_moments(rm, th, stats, sq, batch)
            m = o.b1 * m + (1 - o.b1) * mu
            v = o.b2 * v + (1 - o.b2) * (mu * mu + var)
            c = (t + 1).astype(jnp.float32)
            u = (m / (1 - o.b1 ** c)) / (jnp.sqrt(v / (1 - o.b2 ** c)) + o.eps) + wd * th
            return (th - sched(t) * u, m, v), (loss, th)

        th0 = theta0[name]
        zero = jnp.zeros_like(th0)
        (last, _, _), (losses, ths) = jax.lax.scan(step, (th0, zero, zero),
                                                   jnp.arange(steps, dtype=jnp.int32))
        final = rm.population_loss({name: last}, stats)
        return (jnp.concatenate([losses, final[None]]),
                {name: jnp.concatenate([ths, last[None]])})

    return jax.jit(run)
