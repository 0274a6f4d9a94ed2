"""Solvers of ``A s = g`` for the search direction."""

from trustregion.solvers.base import Solver
from trustregion.solvers.cg import ConjugateGradient
from trustregion.solvers.dense import DenseSolver

__all__ = ["ConjugateGradient", "DenseSolver", "Solver"]
