"""Deviation from the block-symmetric subspace (opt-in probe "symmetry"): when the reduced
dynamics (topicdyn.theory.reduced, docs/REDUCTION.md) stop describing the run.

For every matrix M the reduction reads, asym = ||M - sym(M)||_F / ||sym(M)||_F over its
(n_vocab, n_vocab) vocabulary block, sym(M) the orbit means of the block basis (the
orthogonal projection onto the subspace). The products are basis-free: value_map (E W^V W_dec),
score_map (E W^Q W^K^T E^T / sqrt(d)) and gram (E E^T); the factors of the reduced regimes (W^V
in V, E in E, W^Q and W^K in A) are read in their one-hot basis. Near 0: the run is on the
subspace; of order 1 or more: the non-symmetric part (the random init, finite-batch noise)
is as large as the symmetric one and the reduced prediction is not a description of the run.
Configs without disjoint uniform topics get no values.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from topicdyn.models import get_variant
from topicdyn.models.variant import VALUE_MAP
from topicdyn.probes import register


def asymmetry(M: jnp.ndarray, classes: np.ndarray, counts: np.ndarray) -> jnp.ndarray:
    """||M - sym(M)||_F / ||sym(M)||_F of the (n, n) block M[:n, :n] (classes (n, n))."""
    n = classes.shape[0]
    A = M[:n, :n]
    means = jax.ops.segment_sum(A.ravel(), jnp.asarray(classes.ravel()), len(counts))
    S = (means / np.maximum(counts, 1))[classes]
    return jnp.linalg.norm(A - S) / jnp.maximum(jnp.linalg.norm(S), 1e-30)


@register("symmetry", requires=(VALUE_MAP,))
def probe_symmetry(params, params0, ctx) -> dict:
    """asym of the value map, score map, Gram and the reduced regimes' factors (module doc)."""
    from topicdyn.theory.common import is_disjoint_uniform
    from topicdyn.theory.reduced.blocks import block_basis

    cfg = ctx.cfg
    if cfg.data.source != "lda" or not is_disjoint_uniform(cfg):
        return {}
    b = block_basis(cfg)
    mats = get_variant(cfg.model.name).matrices(params, cfg)
    out = {}
    E = mats.get("E")
    if E is not None:
        out["gram"] = asymmetry(E @ E.T, b.classes, b.counts)
    if "value_map/1" in mats:
        out["value_map"] = asymmetry(mats["value_map/1"], b.classes, b.counts)
    if "score_map/1" in mats:
        out["score_map"] = asymmetry(mats["score_map/1"], b.classes, b.counts)
    from topicdyn.theory.reduced.model import TRAINED, regime_of

    regime = regime_of(cfg)
    for name in TRAINED.get(regime, ()):
        x = params[name]
        out[name] = asymmetry(x[0] if x.ndim == 3 else x, b.classes, b.counts)
    return out
