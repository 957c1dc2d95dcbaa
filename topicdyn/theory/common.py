"""Shared pieces of the theory package: assumption records, symmetry checks, estimators' errors,
and full-batch optimisers (damped Newton for the handful of scalars of the symmetric optima,
L-BFGS for larger problems)."""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from topicdyn.config import Config
from topicdyn.data import topic_word_matrix


def beta_matrix(cfg: Config) -> np.ndarray:
    """(T, V) float64 topic-word matrix of the config."""
    return topic_word_matrix(cfg.data)


def n_random_ids(cfg: Config) -> int:
    """How many ids a SHOW_RANDOM position draws from (uniformly)."""
    return cfg.data.V if cfg.mask.random_source == "content" else cfg.data.n_vocab


def owner_topic(cfg: Config) -> np.ndarray | None:
    """(V,) topic owning each word when the supports are disjoint (-1: no topic), else None."""
    nz = beta_matrix(cfg) > 0
    if (nz.sum(0) > 1).any():
        return None
    return np.where(nz.any(0), nz.argmax(0), -1)


def is_disjoint_uniform(cfg: Config) -> bool:
    """Disjoint supports of equal size, uniform inside each topic (the symmetric case)."""
    beta, own = beta_matrix(cfg), owner_topic(cfg)
    if own is None or (own < 0).any():
        return False
    sizes = (beta > 0).sum(1)
    return bool((sizes == sizes[0]).all() and np.allclose(beta[beta > 0], 1.0 / sizes[0]))


def require_symmetric(cfg: Config, what: str) -> None:
    """The symmetry reduction needs exchangeable topics and exchangeable words inside a topic."""
    if not is_disjoint_uniform(cfg):
        raise ValueError(f"{what}: the symmetric-family reduction needs disjoint uniform topics "
                         f"of equal size (data.topic_words=disjoint), got "
                         f"topic_words={cfg.data.topic_words!r}")
    # both priors (symmetric Dirichlet, uniform k-subsets) are topic-permutation invariant


def describe(cfg: Config, estimator: str, **notes: str) -> dict[str, str]:
    """Assumption record attached to every prediction (all values are strings)."""
    d, m = cfg.data, cfg.mask
    if d.prior == "dirichlet":
        prior = f"theta ~ Dirichlet(alpha={d.alpha} * 1_{d.T})"
    else:
        w = f"Dirichlet(alpha={d.alpha})" if d.k_weights == "dirichlet" else "equal"
        prior = f"uniform {d.k}-subset of {d.T} topics, weights {w}"
    topics = {"disjoint": f"disjoint uniform, {d.T} topics x {d.v} words",
              "overlap": f"overlapping (overlap={d.overlap}), {d.T} topics x {d.v} words",
              "zipf": f"disjoint Zipf(s={d.zipf_s}), {d.T} topics x {d.v} words",
              "explicit": f"explicit beta, {d.T} topics x {d.V} words"}[d.topic_words]
    rnd = "all n_vocab ids" if m.random_source == "all" else "the V content words"
    keys = ("unselected positions (selected ones removed, START/END kept)"
            if m.key_set == "unselected" else "every non-PAD position (selected ones too)")
    out = {
        "topics": topics,
        "prior": prior,
        "lengths": (f"N = {d.N_min}" if d.N_min == d.N_max
                    else f"N uniform on [{d.N_min}, {d.N_max}]")
        + (", wrapped in START/END" if d.start_end else ", no START/END"),
        "masking": (f"p_mask={m.p_mask}: MASK {m.p_replace_mask} / random {m.p_replace_random} "
                    f"(uniform over {rnd}) / keep {m.p_keep}; loss at selected positions only"),
        "key_set": f"{m.key_set}: keys are {keys}",
        "estimator": estimator,
    }
    out.update(notes)
    return out


def ratio_se(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """Ratio estimator sum(num)/sum(den) over iid clusters and its delta-method standard error."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    n = len(num)
    r = num.sum() / den.sum()
    if n < 2:
        return float(r), float("nan")
    resid = num - r * den
    return float(r), float(np.sqrt(n / (n - 1) * np.sum(resid ** 2)) / den.sum())


def mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean of iid values and its standard error."""
    x = np.asarray(x, np.float64)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


def lbfgs_minimize(fun: Callable, x0: jax.Array, data, *, max_iter: int = 500,
                   tol: float = 1e-7) -> tuple[np.ndarray, float, int]:
    """Minimise fun(x, data) over a flat vector x with optax L-BFGS (full batch, zoom line search).

    Returns (x (P,), value, iterations). Stops when the gradient norm is below tol or after
    max_iter iterations. data is a jit argument (never a baked-in constant: XLA would fold it).
    """
    opt = optax.lbfgs()

    @jax.jit
    def run(x0, data):
        f = lambda x: fun(x, data)
        vg = optax.value_and_grad_from_state(f)

        def step(carry):
            x, state, _ = carry
            value, grad = vg(x, state=state)
            updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
            return optax.apply_updates(x, updates), state, jnp.linalg.norm(grad)

        def cond(carry):
            _, state, gnorm = carry
            k = optax.tree.get(state, "count")
            return (k == 0) | ((k < max_iter) & (gnorm >= tol))

        init = (x0, opt.init(x0), jnp.asarray(jnp.inf, x0.dtype))
        x, state, _ = jax.lax.while_loop(cond, step, init)
        return x, f(x), optax.tree.get(state, "count")

    x, v, k = run(jnp.asarray(x0, jnp.float32), data)
    return np.asarray(x, np.float64), float(v), int(k)


def newton_minimize(fun: Callable, x0, data, *, max_iter: int = 200, tol: float = 1e-6,
                    max_step: float = 1.0, ftol: float = 1e-10) -> tuple[np.ndarray, float, int]:
    """Minimise fun(x, data) over a few scalars by damped Newton (Levenberg-Marquardt) with a
    trust region (steps no longer than max_step).

    The value, gradient and Hessian come from one jitted JAX function (far cheaper to compile
    than an L-BFGS loop with a line search, which matters for these 2-4 parameter problems); a
    step is accepted when the loss does not increase, else the damping grows, so non-convex
    problems fall back to short gradient-like steps. The step cap matters for losses that go
    flat at infinity (softmax scores): an uncapped first step can land on the flat tail, whose
    vanishing gradient looks like convergence. Stops when the gradient norm is below tol or no
    step decreases the (float32) loss any more, or the Newton decrement (the predicted decrease)
    falls below ftol * max(1, |f|), i.e. below float32 resolution. Returns (x, value, iters).
    """
    vgh = jax.jit(lambda x, d: (fun(x, d), jax.grad(fun)(x, d), jax.hessian(fun)(x, d)))
    val = jax.jit(fun)
    ev = lambda x: [np.asarray(a, np.float64) for a in vgh(jnp.asarray(x, jnp.float32), data)]
    x = np.asarray(x0, np.float64)
    f, g, H = ev(x)
    lam, it = 1e-6, 0
    for it in range(1, max_iter + 1):
        if not np.linalg.norm(g) >= tol:
            break
        while lam < 1e12:
            try:
                step = np.linalg.solve(H + lam * np.eye(len(x)), -g)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            norm = np.linalg.norm(step)
            if norm > max_step:
                step *= max_step / norm
            fn = float(val(jnp.asarray(x + step, jnp.float32), data))
            if fn <= f:
                break
            lam *= 10
        else:
            break
        pred = -(g @ step + 0.5 * step @ H @ step)
        x, lam = x + step, max(lam / 10, 1e-12)
        f, g, H = ev(x)
        if pred < ftol * max(1.0, abs(f)):
            break
    return x, float(f), it


def sandwich_cov(per_doc: Callable, x: np.ndarray, data, total_weight: float) -> np.ndarray:
    """Monte Carlo covariance (P, P) of the minimiser of F(x) = sum_d per_doc(x, data)_d / W.

    Documents are the iid units: Cov(x_hat) ~ H^+ (sum_d g_d g_d^T / W^2) H^+ with g_d the
    centred gradient of document d's loss and H the Hessian of F at x_hat. The pseudo-inverse
    puts zero variance on loss-invisible directions (the reported gauge).
    """
    @jax.jit
    def parts(x, data):
        F = lambda x: jnp.sum(per_doc(x, data)) / total_weight
        return jax.hessian(F)(x), jax.jacfwd(lambda x: per_doc(x, data))(x)

    H, J = (np.asarray(a, np.float64) for a in parts(jnp.asarray(x, jnp.float32), data))
    D = J.shape[0]
    Jc = J - J.mean(0)
    C = Jc.T @ Jc * (D / max(D - 1, 1)) / total_weight ** 2
    Hi = np.linalg.pinv(H, rcond=1e-8)
    return Hi @ C @ Hi


def sandwich_se(per_doc: Callable, x: np.ndarray, data, total_weight: float) -> np.ndarray:
    """Standard errors (P,): the square root of the diagonal of `sandwich_cov`."""
    return np.sqrt(np.clip(np.diag(sandwich_cov(per_doc, x, data, total_weight)), 0, None))
