"""Solvers of ``A s = g`` for the search direction, and of the trust-region subproblem."""

from trustregion.solvers.base import Ball, Solver
from trustregion.solvers.cg import ConjugateGradient
from trustregion.solvers.dense import DenseSolver
from trustregion.solvers.lanczos import smallest_eigenpair
from trustregion.solvers.secular import SecularSolver
from trustregion.solvers.steihaug import SteihaugCG

__all__ = ["Ball", "ConjugateGradient", "DenseSolver", "SecularSolver", "Solver", "SteihaugCG", "smallest_eigenpair"]
