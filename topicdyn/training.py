"""Loss, optimiser and the compiled training chunk.

The story of one step: derive the data key from (seed, step), sample an MLM batch on device, take
the loss at selected positions, update through optax (frozen groups masked with set_to_zero).
`make_sampler` draws a block of steps' batches for every member (vmap over the ensemble axis)
and `make_train_fn` runs the block's steps in one jitted loop with the state donated;
`make_chunk_fn` composes the two (the host loop drives them itself, sampling ahead).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from topicdyn.config import Config
from topicdyn.masking import MaskThresholds, MLMBatch, sample_batch
from topicdyn.models import get_variant, kernels
from topicdyn.models.fast import fast_loss
from topicdyn.models.lean import lean_loss, structural_constants
from topicdyn.models import variant as protocol
from topicdyn.xla import compile_options

# independent random streams derived from one seed
INIT_STREAM, DATA_STREAM, EVAL_STREAM, POP_EVAL_STREAM = 0, 1, 2, 3


def stream_key(seed, stream: int) -> jax.Array:
    """Root key of one stream for a seed (seed may be a traced int)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), stream)


def data_key(seed, step) -> jax.Array:
    """The key of the training batch at `step`: a pure function of (seed, step)."""
    return jax.random.fold_in(stream_key(seed, DATA_STREAM), step)


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState


def param_labels(params: dict, cfg: Config) -> dict:
    """Same tree as params, each leaf labelled with its group name (the variant's groups)."""
    return protocol.label_tree(get_variant(cfg.model.name), params)


def trainable_groups(cfg: Config) -> set[str]:
    """Groups the optimiser updates (possibly only from a scheduled step on)."""
    return protocol.trainable_groups(get_variant(cfg.model.name), cfg)


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

    # groups with the same settings share one optimiser instance (one step count, one fused
    # update per leaf): labels name the groups they cover, e.g. "decoder+embedding+value"
    train = trainable_groups(cfg)
    spec = {g: (mult.get(g, 1.0), unfreeze.get(g)) for g in train}
    label = {g: "+".join(sorted(h for h in train if spec[h] == spec[g])) for g in train}
    transforms = {"frozen": optax.set_to_zero()}
    for g in sorted(train):
        if label[g] in transforms:
            continue
        tx = base(spec[g][0])
        if spec[g][1] is not None:
            # zero the gradient before the optimiser (moments stay 0) and the update after it
            # (weight decay stays off) until the unfreezing step
            gate = optax.scale_by_schedule(
                lambda t, s=spec[g][1]: (t >= s).astype(jnp.float32))
            tx = optax.chain(gate, tx, gate)
        transforms[label[g]] = tx

    def labels(params):
        return jax.tree.map(lambda g: label.get(g, "frozen"), param_labels(params, cfg))

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


def generic_loss(params, batch, cfg: Config) -> jax.Array:
    """The definition: the variant's apply, then masked_loss."""
    logits, _ = get_variant(cfg.model.name).apply(params, batch, cfg)
    return masked_loss(logits, batch, cfg)


def loss_fn(params, batch, cfg: Config) -> jax.Array:
    """Training loss. The bag-of-words kernel (models/fast.py) computes the same number
    (tests/test_fast.py) and is used only where kernels.FAST is declared exact for every config
    field, unless model.impl=generic."""
    if cfg.model.impl != "generic" and kernels.exact(kernels.FAST, cfg):
        return fast_loss(params, batch, cfg)
    return generic_loss(params, batch, cfg)


def train_loss_fn(params, batch, cfg: Config) -> jax.Array:
    """The loss the training step differentiates, through the kernel kernels.select(cfg) picks.
    The lean kernel takes matrices the variant holds frozen at a known constant (identity
    embedding/decoder, zero W^Q/W^K) as constants, exact for every state training can reach."""
    impl = kernels.select(cfg)
    if impl == "lean":
        return lean_loss(params, batch, cfg, const=structural_constants(cfg, trainable_groups(cfg)))
    if impl == "fast":
        return fast_loss(params, batch, cfg)
    return generic_loss(params, batch, cfg)


def use_fast(cfg: Config) -> bool:
    """Whether training runs through a fast kernel (raises for model.impl=fast without one)."""
    return kernels.select(cfg) != "generic"


def group_norms(tree: dict, cfg: Config, groups: set[str] | None = None) -> dict:
    """{group: global L2 norm} of a params-shaped tree (only `groups`, if given)."""
    labels = param_labels(tree, cfg)
    sums: dict = {}
    for g, x in zip(jax.tree.leaves(labels), jax.tree.leaves(tree)):
        if groups is not None and g not in groups:
            continue
        sums.setdefault(g, []).append(jnp.sum(x.astype(jnp.float32) ** 2))
    return {g: jnp.sqrt(sum(v)) for g, v in sums.items()}


def init_state(cfg: Config, seeds: jax.Array,
               init_scales: jax.Array | None = None) -> TrainState:
    """Ensemble state: every leaf has a leading axis of len(seeds).

    init_scales: optional (len(seeds),) per-member model.init_scale (sweeps vmap it). The groups
    drawn with init_scale (no explicit model.init_<group>) are drawn at std 1 and multiplied by
    the member's scale: bit-identical to a run with model.init_scale set to that value, because
    flax's normal initialiser is exactly normal(key) * std.
    """
    if init_scales is None:
        return _init_program(cfg, False)(seeds)
    return _init_program(cfg, True)(seeds, jnp.asarray(init_scales, jnp.float32))


@functools.lru_cache(maxsize=16)  # one compilation per config in a process (notebooks, tests)
def _init_program(cfg: Config, scaled: bool):
    """jit(vmap(seed[, scale] -> TrainState)) of init_state."""
    model, tx = get_variant(cfg.model.name), make_optimizer(cfg)

    def at_scale(s):
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_scale=s))

    def one(seed, scale=None):
        key = stream_key(seed, INIT_STREAM)
        if scale is None:
            params = model.init(key, cfg)
        else:
            # std 0 draws exact zeros and std 1 the unit normals; fixed matrices (and explicit
            # per-group stds) are equal in both, so p0 + (p1 - p0) * scale leaves them unchanged
            p1, p0 = model.init(key, at_scale(1.0)), model.init(key, at_scale(0.0))
            params = jax.tree.map(lambda a, b: b + (a - b) * scale, p1, p0)
        return TrainState(params, tx.init(params))

    # no compiler_options here: callers trace init_state (jax.eval_shape), where jit refuses them
    return jax.jit(jax.vmap(one))


def train_batch(seed, step, cfg: Config, mask_thr: MaskThresholds | None = None) -> MLMBatch:
    """The training batch at `step`, reduced to the fields the loss reads. mask_thr: this
    member's mask probabilities as traced thresholds (sweeps); None: those of cfg.mask."""
    b = sample_batch(data_key(seed, step), cfg.data, cfg.mask, None, mask_thr)
    return MLMBatch(b.inputs, b.targets, b.selected, b.key_mask, None, None, None, None)


def make_update(cfg: Config):
    """(state, batch, lr_scale=None) -> (state, metrics) for one ensemble member: loss, gradient,
    optax. lr_scale (a scalar) multiplies the update: with cfg.optim.lr = 1 it is the member's
    learning rate (sweeps vmap it)."""
    tx = make_optimizer(cfg)
    # norms of frozen groups' gradients are not asked for, so XLA never computes those gradients
    train = trainable_groups(cfg)

    def update(state: TrainState, batch, lr_scale=None):
        loss, grads = jax.value_and_grad(train_loss_fn)(state.params, batch, cfg)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        if lr_scale is not None:
            # every optimiser and schedule here is linear in optim.lr (the learning rate is the
            # last factor of the update), so scaling the update is a per-member learning rate
            updates = jax.tree.map(lambda u: u * lr_scale.astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state), {"loss": loss,
                                               "grad_norm": group_norms(grads, cfg, train)}

    return update


def make_step(cfg: Config):
    """(state, seed, step) -> (state, metrics) for one ensemble member."""
    update = make_update(cfg)

    def step_fn(state: TrainState, seed, step):
        return update(state, train_batch(seed, step, cfg))

    return step_fn


DISPATCH_BYTES = 32 * 2 ** 20  # bound on the batches one dispatch samples ahead (all members)


def steps_per_dispatch(cfg: Config, members: int) -> int:
    """Steps whose batches are sampled in one program and trained in the next (at most
    train.chunk): batches of `members` members take ~10 bytes per position, kept under
    DISPATCH_BYTES so that a large ensemble's batches stay in cache-sized blocks."""
    per_step = 10 * max(members, 1) * cfg.data.batch_size * cfg.data.seq_len
    return int(max(1, min(cfg.train.chunk, DISPATCH_BYTES // per_step)))


SAMPLE_POSITIONS = 300_000  # positions the sampler draws per kernel (all members of g steps)


def _largest_divisor_at_most(n: int, k: int) -> int:
    return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


def make_sampler(cfg: Config, steps: int):
    """jit((seeds, start, mask_thr=None) -> MLMBatch with leading (steps, n_seeds) axes): the
    batches of steps start..start+steps-1 of every member, exactly train_batch(seed, t) (the
    fields the loss reads; the others None). mask_thr: per-member MaskThresholds (sweeps) or
    None for cfg.mask's constants.

    A program of its own, so it can run on another device than training (topicdyn.loop
    samples the next block on a spare CPU device while the current one trains) and so every
    batch is materialised once (sampled inside the step, XLA would fuse the sampler into every
    consumer of the batch)."""
    def sample(seeds, start, mask_thr=None):
        if mask_thr is None:
            one = jax.vmap(lambda s, t: train_batch(s, t, cfg), in_axes=(0, None))
        else:
            per = jax.vmap(lambda s, t, th: train_batch(s, t, cfg, th), in_axes=(0, None, 0))
            one = lambda s, t: per(s, t, mask_thr)  # noqa: E731
        # groups of g steps vmapped together, a loop over the groups: enough positions per
        # kernel to amortise its launch, few enough for the working set to stay in cache
        m = int(np.shape(seeds)[0])
        g = _largest_divisor_at_most(steps, max(1, SAMPLE_POSITIONS // (
            m * cfg.data.batch_size * cfg.data.seq_len)))
        ts = start + jnp.arange(steps, dtype=jnp.int32).reshape(steps // g, g)
        out = jax.lax.map(lambda tg: jax.vmap(lambda t: one(seeds, t))(tg), ts)
        return jax.tree.map(lambda x: x.reshape((steps,) + x.shape[2:]), out)

    return jax.jit(sample, compiler_options=compile_options())


def make_train_fn(cfg: Config, steps: int):
    """jit((state, batches, n, lr_scale=None) -> (state, metrics)): the first n <= steps of the
    sampled batches (make_sampler), one update each; state donated. metrics leaves have shape
    (steps, n_seeds), rows i >= n zero. lr_scale: optional (n_seeds,) per-member factor on the
    update (see make_update). One program for every n (a traced loop bound), so log-spaced
    checkpoint gaps never recompile."""
    update_one = make_update(cfg)

    def train(state, batches, n, lr_scale=None):
        n = jnp.minimum(n, steps)
        if lr_scale is None:
            upd = jax.vmap(update_one)
        else:
            upd = lambda st, b: jax.vmap(update_one)(st, b, lr_scale)  # noqa: E731
        first = jax.tree.map(lambda x: x[0], batches)
        out_shape = jax.eval_shape(upd, state, first)[1]
        metrics = jax.tree.map(lambda x: jnp.zeros((steps,) + x.shape, x.dtype), out_shape)

        def step(j, carry):
            state, metrics = carry
            state, m = upd(state, jax.tree.map(lambda x: x[j], batches))
            return state, jax.tree.map(lambda buf, x: buf.at[j].set(x), metrics, m)

        return jax.lax.fori_loop(0, n, step, (state, metrics))

    return jax.jit(train, donate_argnums=(0,), compiler_options=compile_options())


def make_chunk_fn(cfg: Config):
    """(state, seeds, start, n, lr_scale=None, mask_thr=None) -> (state, metrics): steps
    start..start+n-1 (n capped at train.chunk), through make_sampler and make_train_fn in blocks
    of steps_per_dispatch(cfg, members) steps. metrics leaves have shape (chunk, n_seeds), rows
    i >= n zero. The host training loop (topicdyn.loop) drives the two programs itself, to
    sample the next block while the current one trains.

    lr_scale: optional (n_seeds,) per-member factor on the update; mask_thr: optional
    per-member MaskThresholds (masking.mask_thresholds). The loss's static buffer sizes follow
    cfg.mask: give the program the members' largest p_mask (1 - p_replace_mask) (sweep groups
    do, kernels.widest_mask)."""
    K = cfg.train.chunk

    def chunk(state, seeds, start, n, lr_scale=None, mask_thr=None):
        S = steps_per_dispatch(cfg, int(np.shape(seeds)[0]))
        sample, train = programs(cfg, S)
        n, start = min(int(n), K), int(start)
        parts, done = [], 0
        while done < n or not parts:
            m = min(S, n - done)
            batches = sample(seeds, np.int32(start + done), mask_thr)
            state, metrics = train(state, batches, np.int32(m), lr_scale)
            parts.append(jax.tree.map(lambda x, m=m: x[:m], metrics))
            done += m
            if m == 0:
                break
        out = jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
        return state, jax.tree.map(
            lambda x: jnp.zeros((K,) + x.shape[1:], x.dtype).at[:x.shape[0]].set(x), out)

    return chunk


@functools.lru_cache(maxsize=16)
def programs(cfg: Config, steps: int) -> tuple:
    """(make_sampler(cfg, steps), make_train_fn(cfg, steps)), built once per config in a
    process: a second run of the same config (a resume, a notebook's re-run) reuses the
    compiled programs."""
    return make_sampler(cfg, steps), make_train_fn(cfg, steps)


def ensemble_seeds(cfg: Config) -> jax.Array:
    """Member i trains with seed cfg.train.seed + i."""
    return jnp.arange(cfg.train.n_seeds, dtype=jnp.int32) + cfg.train.seed
