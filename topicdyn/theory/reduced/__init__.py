"""Reduced block-symmetric dynamics: training the handful of scalars of the block-symmetric
subspace on the population loss, with the run's own optimiser (docs/REDUCTION.md)."""
from topicdyn.theory.reduced.blocks import BlockBasis, block_basis
from topicdyn.theory.reduced.dynamics import ReducedTrajectory, reduced_trajectory
from topicdyn.theory.reduced.model import ReducedModel, reduced_model

__all__ = ["BlockBasis", "block_basis", "ReducedModel", "reduced_model", "ReducedTrajectory",
           "reduced_trajectory"]
