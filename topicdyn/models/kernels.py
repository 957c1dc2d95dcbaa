"""Fail-closed selection of fast loss kernels.

A kernel is a faster formulation of loss(params, batch) for some configs. It is used only where it
is *proven* equal to the definition (the variant's apply + training.masked_loss), and the proof
is a declaration checked field by field:

* each kernel lists every config field it depends on, with the values it is exact for
  (`ANY`: exact for every valid value of that field);
* `LOSS_INVARIANT` lists the fields that cannot change loss(params, batch) at all (learning rate,
  steps, seeds, init scales, ...);
* a field in neither list rules the kernel out. A new config field therefore makes every kernel
  fall back to the definition until someone declares it, and tests/test_kernels.py fails CI for
  an undeclared field, so a new switch never trains something other than the model written.

`select(cfg)` returns the chosen implementation: of the kernels exact for cfg and the definition
("generic"), the cheapest by the cost model (models/cost.py: the kernels' vocabulary tables grow
as nv^2 and lose to the definition at large vocabularies). With model.impl=fast only the exact
kernels compete (a ConfigError naming the field that rules the last one out if there is none);
model.impl=generic is the definition.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

ANY = "any"  # exact for every valid value of the field

# fields that cannot change loss(params, batch): they act on the optimiser, the schedule, the
# initial parameters, seeds and bookkeeping, never on the function being differentiated
LOSS_INVARIANT = frozenset({
    "preset", "model.impl",
    "model.init_scale", "model.init_embedding", "model.init_query", "model.init_key",
    "model.init_value", "model.init_decoder", "model.init_position",
    "optim.name", "optim.lr", "optim.schedule", "optim.warmup_steps", "optim.b1", "optim.b2",
    "optim.eps", "optim.momentum", "optim.weight_decay", "optim.grad_clip", "optim.group_lr",
    "optim.freeze", "optim.unfreeze_at",
    "train.steps", "train.seed", "train.n_seeds", "train.log_every", "train.ckpt_log_points",
    "train.ckpt_linear_from", "train.ckpt_every", "train.ckpt_steps", "train.chunk",
    "train.n_eval",
    "train.n_pop_eval", "train.probes",
})

# The bag-of-words kernels read only token ids, the key mask and the selected positions: they are
# exact for any data generator and any MLM corruption. Listed by name (not by section) so that a
# new data or mask field is undeclared until someone checks it.
_ANY_DATA_MASK = {f: ANY for f in (
    "data.T", "data.v", "data.topic_words", "data.overlap", "data.zipf_s", "data.beta",
    "data.prior", "data.alpha", "data.k", "data.k_weights", "data.N_min", "data.N_max",
    "data.start_end", "data.batch_size", "data.labels", "data.source", "data.corpus",
    "data.vocab_size", "data.oov", "data.heldout", "data.split", "data.label_threshold",
    "data.lda_passes",
    "mask.p_mask", "mask.p_replace_mask", "mask.p_replace_random", "mask.p_keep",
    "mask.random_source", "mask.key_set")}


@dataclass(frozen=True)
class Kernel:
    """A fast formulation and the field values it is exact for."""

    name: str
    exact_for: dict  # "section.field" -> ANY or a tuple of allowed values
    doc: str = ""

    def why_not(self, cfg) -> str | None:
        """None when the kernel is exact for cfg; else the first field that rules it out."""
        for f in config_fields(type(cfg)):
            if f in LOSS_INVARIANT:
                continue
            if f not in self.exact_for:
                return f"{f} (not declared by kernel {self.name!r})"
            allowed = self.exact_for[f]
            if allowed is ANY:
                continue
            value = field_value(cfg, f)
            if value not in allowed:
                return f"{f}={value!r} (kernel {self.name!r} is exact for " \
                       f"{', '.join(map(repr, allowed))})"
        return None


# "fast": vocabulary tables for the one-layer position-free MLM models (models/fast.py)
FAST = Kernel("fast", {
    **_ANY_DATA_MASK, "mask.objective": ("mlm",),
    "model.name": ("attention", "embedding_only"), "model.d_model": ANY, "model.n_heads": ANY,
    "model.n_layers": (1,), "model.positional": ("none",), "model.embedding": ANY,
    "model.attention": ANY, "model.value": ANY, "model.decoder": ("trained", "identity", "tied"),
    "model.residual": ANY, "model.layernorm": ANY, "model.loss": ("ce", "squared"),
}, "bag-of-words vocabulary tables (models/fast.py)")

# "lean": the fast kernel's common case with a hand-written backward pass (models/lean.py)
LEAN = Kernel("lean", {
    **FAST.exact_for, "model.n_heads": (1,), "model.residual": (False,),
    "model.layernorm": (False,), "model.loss": ("ce",),
}, "fast kernel, one head, CE, no residual/LayerNorm, hand-written backward (models/lean.py)")

# preference order for training; probes use FAST's tables only
KERNELS = (LEAN, FAST)


def config_fields(cls, prefix: str = "") -> list[str]:
    """Every leaf field of a config dataclass, recursively, as dotted names ("model.n_heads")."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += config_fields(tp, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def field_value(cfg, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def undeclared(kernel: Kernel, config_cls) -> list[str]:
    """Fields of config_cls that kernel neither declares nor finds in LOSS_INVARIANT."""
    return [f for f in config_fields(config_cls)
            if f not in LOSS_INVARIANT and f not in kernel.exact_for]


def exact(kernel: Kernel, cfg) -> bool:
    return kernel.why_not(cfg) is None


def candidates(cfg) -> list[str]:
    """The implementations select() chooses among for cfg (exact kernels in preference order,
    then the definition unless model.impl=fast)."""
    impl = cfg.model.impl
    if impl == "generic":
        return ["generic"]
    out = [k.name for k in KERNELS if exact(k, cfg)]
    if impl == "fast":
        if not out:
            from topicdyn.config import ConfigError
            raise ConfigError(f"model.impl: no fast kernel is exact for this config: "
                              f"{FAST.why_not(cfg)}; use auto or generic")
        return out
    return out + ["generic"]


def select(cfg) -> str:
    """The training-loss implementation for cfg: "lean", "fast" or "generic" (see module doc)."""
    from topicdyn.models.cost import cheapest

    c = candidates(cfg)
    return c[0] if len(c) == 1 else cheapest(c, cfg)


def record(cfg) -> dict:
    """What trains and probes cfg: {"train_loss", "probes", "estimated_gflop_per_step" (the cost
    model's figure for each candidate), "why_generic"}."""
    from topicdyn.models.cost import describe

    train = select(cfg)
    probes = "vocab" if exact(FAST, cfg) else "generic"
    out = {"train_loss": train, "probes": probes,
           "estimated_gflop_per_step": describe(candidates(cfg), cfg)}
    if train == "generic" and cfg.model.impl != "generic":
        out["why_generic"] = (FAST.why_not(cfg) or "the cost model estimates the definition "
                              "cheaper than every exact kernel at these shapes")
    return out


def widest_mask(cfg, masks):
    """Of several mask configs trained by one program (sweep groups with per-member mask
    thresholds), the one whose selected positions need the largest static kernel buffers."""
    from topicdyn.models.fast import CAP_SIGMAS, default_cap
    from topicdyn.models.lean import LEAN_CAP_SIGMAS

    d = cfg.data

    def caps(m):
        c = dataclasses.replace(cfg, mask=m)
        return tuple(default_cap(c, d.batch_size, d.seq_len, k)
                     for k in (LEAN_CAP_SIGMAS, CAP_SIGMAS))

    return max(masks, key=caps)
