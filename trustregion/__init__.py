"""trustregion: trust-region optimizers for PyTorch with pluggable curvature, solver and step control.

>>> from trustregion import TrustRegionOptimizer
>>> opt = TrustRegionOptimizer(model.parameters(), max_kl=0.01)   # doctest: +SKIP
>>> opt.step(lambda: (surrogate_loss(), mean_kl()))                # doctest: +SKIP
"""

from trustregion.curvature import (
    Curvature,
    Damped,
    GaussNewton,
    Hessian,
    KLHessian,
    LinearOperator,
    ResidualGaussNewton,
    SquaredError,
    StepProblem,
)
from trustregion.distributions import (
    BernoulliFisher,
    CategoricalFisher,
    DiagonalGaussianFisher,
    MultiCategoricalFisher,
    OutputFisher,
)
from trustregion.optimizer import TrustRegionOptimizer
from trustregion.result import (
    Reason,
    SearchResult,
    SolverReason,
    SolverResult,
    StepResult,
)
from trustregion.search import (
    BacktrackingLineSearch,
    LevenbergMarquardt,
    LineSearch,
    NoLineSearch,
    RadiusController,
    SearchProblem,
    TrialPoint,
    TrustRadius,
)
from trustregion.solvers import ConjugateGradient, DenseSolver, Solver, SteihaugCG, TrustRegion

__version__ = "0.1.0"

__all__ = [
    "BacktrackingLineSearch",
    "BernoulliFisher",
    "CategoricalFisher",
    "ConjugateGradient",
    "Curvature",
    "Damped",
    "DenseSolver",
    "DiagonalGaussianFisher",
    "GaussNewton",
    "Hessian",
    "KLHessian",
    "LevenbergMarquardt",
    "LineSearch",
    "LinearOperator",
    "MultiCategoricalFisher",
    "NoLineSearch",
    "OutputFisher",
    "RadiusController",
    "Reason",
    "ResidualGaussNewton",
    "SearchProblem",
    "SearchResult",
    "Solver",
    "SolverReason",
    "SolverResult",
    "SquaredError",
    "SteihaugCG",
    "StepProblem",
    "StepResult",
    "TrialPoint",
    "TrustRadius",
    "TrustRegion",
    "TrustRegionOptimizer",
]
