"""The block basis of (n_vocab, n_vocab) matrices under the symmetry group of disjoint uniform
topics (permute topics, permute words inside a topic; special tokens fixed).

A matrix M is invariant under the group action M -> P M P^T (P: a permutation of the content
words in the group) iff it is constant on every orbit of entries (i, j). The orbits are:
    diag (i = j content), same (same topic, i != j), cross (other topics),
    to_<s>   (content row, special column s),  from_<s> (special row s, content column),
    <s>-><t> (special row s, special column t; one entry each).
With 4 special tokens that is 3 + 4 + 4 + 16 = 27 scalars. Coordinates are *per entry* (the
value every entry of the orbit takes), so that a coordinate-wise optimiser (Adam, SGD) acting on
the scalars with the per-entry gradient is exactly the optimiser acting on the full matrix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from topicdyn.config import Config
from topicdyn.theory.common import owner_topic, require_symmetric

SPECIAL_NAMES = ("MASK", "START", "END", "PAD")


@dataclass(frozen=True)
class BlockBasis:
    """Orbit labels of the entries of an (n, n) matrix, n = n_vocab."""

    classes: np.ndarray  # (n, n) int orbit of each entry
    names: tuple[str, ...]  # (K,) orbit names
    counts: np.ndarray  # (K,) entries per orbit

    @property
    def K(self) -> int:
        return len(self.names)

    def assemble(self, theta):
        """(K,) per-entry values -> (n, n) matrix (numpy or jax, differentiable)."""
        return theta[self.classes]

    def project(self, M: np.ndarray) -> np.ndarray:
        """(n, n) -> (K,) orbit means: the orthogonal projection onto the subspace."""
        M = np.asarray(M, np.float64)
        return np.bincount(self.classes.ravel(), M.ravel(), self.K) / np.maximum(self.counts, 1)

    def asymmetry(self, M: np.ndarray) -> float:
        """||M - sym(M)||_F / ||sym(M)||_F: how far M is from the subspace (inf if sym(M) = 0)."""
        M = np.asarray(M, np.float64)
        S = self.assemble(self.project(M))
        num, den = np.linalg.norm(M - S), np.linalg.norm(S)
        return float(num / den) if den > 0 else (0.0 if num == 0 else float("inf"))


def block_basis(cfg: Config) -> BlockBasis:
    """The orbits of (n_vocab, n_vocab) entries for a disjoint uniform config."""
    require_symmetric(cfg, "reduced dynamics")
    V, nv = cfg.data.V, cfg.data.n_vocab
    if nv - V != len(SPECIAL_NAMES):
        raise ValueError(f"reduced dynamics: expected {len(SPECIAL_NAMES)} special tokens")
    topic = owner_topic(cfg)
    same = topic[:, None] == topic[None, :]
    cls = np.zeros((nv, nv), np.int64)
    cls[:V, :V] = np.where(same, 1, 2)
    cls[np.arange(V), np.arange(V)] = 0
    names = ["diag", "same", "cross"]
    for i, s in enumerate(SPECIAL_NAMES):
        cls[:V, V + i] = len(names)
        names.append(f"to_{s}")
    for i, s in enumerate(SPECIAL_NAMES):
        cls[V + i, :V] = len(names)
        names.append(f"from_{s}")
    for i, s in enumerate(SPECIAL_NAMES):
        for j, t in enumerate(SPECIAL_NAMES):
            cls[V + i, V + j] = len(names)
            names.append(f"{s}->{t}")
    counts = np.bincount(cls.ravel(), minlength=len(names)).astype(np.float64)
    return BlockBasis(cls, tuple(names), counts)
