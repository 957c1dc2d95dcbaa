"""Loss, optimiser and the compiled training chunk.

The story of one step: derive the data key from (seed, step), sample an MLM batch on device, take
the loss at selected positions, update through optax (frozen groups masked with set_to_zero).
`make_chunk_fn` wraps that step in vmap (the ensemble axis: one member per seed) and lax.scan
(a chunk of steps per dispatch), jitted once with the state donated.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from topicdyn.config import PARAM_GROUPS, Config
from topicdyn.masking import sample_batch
from topicdyn.models import get_model
from topicdyn.models.fast import fast_loss, fast_supported
from topicdyn.models.transformer import PARAM_GROUP, fixed_groups

# independent random streams derived from one seed
INIT_STREAM, DATA_STREAM, EVAL_STREAM = 0, 1, 2


def stream_key(seed, stream: int) -> jax.Array:
    """Root key of one stream for a seed (seed may be a traced int)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), stream)


def data_key(seed, step) -> jax.Array:
    """The key of the training batch at `step`: a pure function of (seed, step)."""
    return jax.random.fold_in(stream_key(seed, DATA_STREAM), step)


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState


def param_labels(params: dict) -> dict:
    """Same tree as params, each leaf labelled with its group name."""
    return {name: jax.tree.map(lambda _: PARAM_GROUP[name], sub) for name, sub in params.items()}


def trainable_groups(cfg: Config) -> set[str]:
    """Groups the optimiser updates (possibly only from a scheduled step on)."""
    groups = set(PARAM_GROUPS) - fixed_groups(cfg) - set(cfg.optim.freeze)
    return groups | {g for g, _ in cfg.optim.unfreeze_at}


def lr_schedule(cfg: Config) -> optax.Schedule:
    o, steps = cfg.optim, cfg.train.steps
    if o.schedule == "cosine":
        sched = optax.cosine_decay_schedule(o.lr, max(steps - o.warmup_steps, 1))
    elif o.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, o.lr, o.warmup_steps, max(steps, 1))
    elif o.schedule == "linear":
        sched = optax.linear_schedule(o.lr, 0.0, max(steps - o.warmup_steps, 1))
    else:
        sched = optax.constant_schedule(o.lr)
    if o.warmup_steps > 0:
        return optax.join_schedules([optax.linear_schedule(0.0, o.lr, o.warmup_steps), sched],
                                    [o.warmup_steps])
    return sched


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    """optax.multi_transform over groups: frozen ones get set_to_zero, so they never move."""
    o = cfg.optim
    base_sched = lr_schedule(cfg)
    mult = dict(o.group_lr)
    unfreeze = dict(o.unfreeze_at)

    def base(m):
        lr = (lambda t: base_sched(t) * m) if m != 1.0 else base_sched
        if o.name == "adam":
            return optax.adam(lr, o.b1, o.b2, o.eps)
        if o.name == "adamw":
            return optax.adamw(lr, o.b1, o.b2, o.eps, weight_decay=o.weight_decay)
        return optax.sgd(lr, momentum=o.momentum or None)

    transforms = {"frozen": optax.set_to_zero()}
    for g in trainable_groups(cfg):
        tx = base(mult.get(g, 1.0))
        if g in unfreeze:
            # zero the gradient before the optimiser (moments stay 0) and the update after it
            # (weight decay stays off) until the unfreezing step
            gate = optax.scale_by_schedule(
                lambda t, s=unfreeze[g]: (t >= s).astype(jnp.float32))
            tx = optax.chain(gate, tx, gate)
        transforms[g] = tx
    train = trainable_groups(cfg)

    def labels(params):
        return jax.tree.map(lambda g: g if g in train else "frozen", param_labels(params))

    tx = optax.multi_transform(transforms, labels)
    if o.grad_clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
    return tx


def masked_loss(logits: jax.Array, batch, cfg: Config) -> jax.Array:
    """Mean loss over selected positions: cross-entropy, or squared error to the one-hot target."""
    if cfg.model.loss == "ce":
        logz = jax.nn.logsumexp(logits, axis=-1)
        per = logz - jnp.take_along_axis(logits, batch.targets[..., None], axis=-1)[..., 0]
    else:
        onehot = jax.nn.one_hot(batch.targets, logits.shape[-1], dtype=logits.dtype)
        per = jnp.sum((logits - onehot) ** 2, axis=-1)
    sel = batch.selected.astype(logits.dtype)
    return jnp.sum(per * sel) / jnp.maximum(jnp.sum(sel), 1.0)


def loss_fn(params, batch, cfg: Config) -> jax.Array:
    """Training loss. The bag-of-words fast path (models/fast.py) computes the same number
    (tests/test_fast.py) and is used whenever it supports the variant, unless model.impl says
    otherwise."""
    if use_fast(cfg):
        return fast_loss(params, batch, cfg)
    logits, _ = get_model(cfg.model.name).apply(params, batch, cfg)
    return masked_loss(logits, batch, cfg)


def use_fast(cfg: Config) -> bool:
    if cfg.model.impl == "generic":
        return False
    ok = fast_supported(cfg)
    if cfg.model.impl == "fast" and not ok:
        from topicdyn.config import ConfigError
        raise ConfigError(f"model.impl: fast is not available for model {cfg.model.name!r}; "
                          "use auto or generic")
    return ok


def group_norms(tree: dict, groups: set[str] | None = None) -> dict:
    """{group: global L2 norm} of a params-shaped tree (only `groups`, if given)."""
    out = {}
    for name, sub in tree.items():
        if groups is not None and PARAM_GROUP[name] not in groups:
            continue
        leaves = jax.tree.leaves(sub)
        out[PARAM_GROUP[name]] = jnp.sqrt(sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in leaves))
    return out


def init_state(cfg: Config, seeds: jax.Array) -> TrainState:
    """Ensemble state: every leaf has a leading axis of len(seeds)."""
    model, tx = get_model(cfg.model.name), make_optimizer(cfg)

    def one(seed):
        params = model.init(stream_key(seed, INIT_STREAM), cfg)
        return TrainState(params, tx.init(params))

    return jax.jit(jax.vmap(one))(seeds)


def make_step(cfg: Config):
    """(state, seed, step) -> (state, metrics) for one ensemble member."""
    tx = make_optimizer(cfg)
    # norms of frozen groups' gradients are not asked for, so XLA never computes those gradients
    train = trainable_groups(cfg)

    def step_fn(state: TrainState, seed, step):
        batch = sample_batch(data_key(seed, step), cfg.data, cfg.mask)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, cfg)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state), {"loss": loss, "grad_norm": group_norms(grads, train)}

    return step_fn


def make_chunk_fn(cfg: Config):
    """jit((state, seeds, start, n) -> (state, metrics)): run steps start..start+n-1.

    One compiled program for every chunk: lax.scan over a fixed capacity cfg.train.chunk, with
    iterations i >= n skipped by lax.cond, so log-spaced checkpoint gaps never trigger a
    recompile. metrics leaves have shape (chunk, n_seeds); rows i >= n are zeros.
    """
    step_fn = jax.vmap(make_step(cfg), in_axes=(0, 0, None))
    K = cfg.train.chunk

    def chunk(state, seeds, start, n):
        out_shape = jax.eval_shape(step_fn, state, seeds, start)[1]

        def body(state, i):
            return jax.lax.cond(
                i < n,
                lambda s: step_fn(s, seeds, start + i),
                lambda s: (s, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), out_shape)),
                state)

        return jax.lax.scan(body, state, jnp.arange(K))

    return jax.jit(chunk, donate_argnums=(0,))


def ensemble_seeds(cfg: Config) -> jax.Array:
    """Member i trains with seed cfg.train.seed + i."""
    return jnp.arange(cfg.train.n_seeds, dtype=jnp.int32) + cfg.train.seed
