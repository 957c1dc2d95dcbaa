"""Training the block scalars on the population loss with the run's own optimiser.

The optimiser is `training.make_optimizer(cfg)` itself (same optax chain, schedule, learning
rate, group multipliers, unfreezing), applied to a tree {parameter name: (K,) scalars}: its
group labels come from the variant's parameter names, exactly as for the full tree. The gradient
handed to it is the *per-entry* gradient (dL/dtheta_k / |orbit k|): on the subspace it equals
every entry's gradient of the full matrix, and Adam/SGD/AdamW act coordinate by coordinate, so
one scalar's update equals every entry's update (global-norm clipping would not: regime_of
excludes grad_clip). Step t's loss is the loss at the parameters after t updates (the training
loop's loss at step t is that of the batch at step t before its update).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.config import Config
from topicdyn.theory.common import ratio_se
from topicdyn.theory.population import PopulationSample
from topicdyn.theory.reduced.model import ReducedModel, pair_stats, reduced_model


@dataclass(frozen=True)
class ReducedTrajectory:
    """The predicted trajectory of one config: S steps of training from theta_0."""

    regime: str
    names: tuple[str, ...]  # (K,) orbit names (blocks.BlockBasis.names)
    loss: np.ndarray  # (S + 1,) population loss (on the sample) after t updates
    theta: dict  # parameter name -> (S + 1, K) per-entry block values after t updates
    loss_se: float  # Monte Carlo standard error of the final loss (0 for enumeration)
    sample: str  # description of the population sample
    seconds: float  # wall time of the computation


def _descent(rm: ReducedModel, tx, steps: int):
    """jit((theta0, stats) -> (losses (S+1,), thetas {name: (S+1, K)}))."""
    inv = jnp.asarray(1.0 / np.maximum(rm.basis.counts, 1.0), jnp.float32)
    vg = jax.value_and_grad(rm.population_loss)

    def run(theta0, stats):
        def step(carry, _):
            theta, opt = carry
            loss, g = vg(theta, stats)
            g = {n: v * inv for n, v in g.items()}  # per-entry gradient
            upd, opt = tx.update(g, opt, theta)
            new = jax.tree.map(lambda a, b: a + b, theta, upd)
            return (new, opt), (loss, theta)

        (last, _), (losses, thetas) = jax.lax.scan(step, (theta0, tx.init(theta0)), None,
                                                   length=steps)
        final = rm.population_loss(last, stats)
        thetas = jax.tree.map(lambda h, x: jnp.concatenate([h, x[None]]), thetas, last)
        return jnp.concatenate([losses, final[None]]), thetas

    return jax.jit(run)


def reduced_trajectory(cfg: Config, sample: PopulationSample, theta0: dict | None = None,
                       steps: int | None = None, batch: float | None = None
                       ) -> ReducedTrajectory:
    """Train the reduced model of cfg (regime V, E, A or F) for `steps` (default
    cfg.train.steps) optimiser steps on `sample`, from theta0 ({name: (K,)}; default the
    projection of the seed's initial parameters onto the subspace). batch: the finite-batch
    mean-field Adam of noise.py with batches of that many documents (V, E; Monte Carlo sample;
    ValueError where it does not apply); None: population gradients, the run's optimiser."""
    from topicdyn.theory.reduced.noise import (meanfield_descent, meanfield_supported,
                                               square_stats)
    from topicdyn.training import make_optimizer, init_state  # cycle: training imports theory

    t0 = time.perf_counter()
    rm = reduced_model(cfg)
    steps = cfg.train.steps if steps is None else steps
    if theta0 is None:
        p0 = jax.tree.map(lambda x: x[0], init_state(cfg, jnp.asarray([cfg.train.seed])).params)
        theta0 = rm.project(p0)
    theta0 = {n: jnp.asarray(theta0[n], jnp.float32) for n in rm.trained}
    stats = pair_stats(sample, cfg.data.n_vocab, rm.basis if rm.regime in ("V", "E") else None)
    if batch is None:
        losses, thetas = _descent(rm, make_optimizer(cfg), steps)(theta0, stats)
    else:
        why = meanfield_supported(cfg, rm) or (
            None if sample.estimator == "monte_carlo" else "needs an unweighted sample")
        if why:
            raise ValueError(f"finite-batch reduced dynamics: {why}")
        losses, thetas = meanfield_descent(rm, cfg, steps, float(batch))(
            theta0, stats, square_stats(rm, stats))
    num = np.asarray(rm.per_doc_loss({n: v[-1] for n, v in thetas.items()}, stats), np.float64)
    den = np.asarray(stats.doc_n, np.float64)
    se = 0.0 if sample.estimator == "enumeration" else ratio_se(num, den)[1]
    return ReducedTrajectory(rm.regime, rm.basis.names, np.asarray(losses, np.float64),
                             {n: np.asarray(v, np.float64) for n, v in thetas.items()},
                             float(se), sample.description, time.perf_counter() - t0)
