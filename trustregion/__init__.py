"""trustregion: trust-region optimizers for PyTorch with pluggable curvature, solver and step control.

Two :class:`torch.optim.Optimizer` classes, one algorithm each:

* :class:`TrustRegionOptimizer`: the KL-constrained natural step of TRPO and NPG;
* :class:`TrustRegionMinimizer`: radius-controlled minimisation (Newton-CG, Gauss-Newton,
  Levenberg-Marquardt).

:func:`minimize`, :func:`least_squares` and :func:`run` drive a whole run with scipy's stopping
rules and return a :class:`RunResult`.

>>> from trustregion import TrustRegionOptimizer
>>> opt = TrustRegionOptimizer(model.parameters(), max_kl=0.01)   # doctest: +SKIP
>>> opt.step(lambda: (surrogate_loss(), mean_kl()))                # doctest: +SKIP

Data objects the extension interfaces pass around (``SolverResult``, ``SearchProblem``,
``Ball``, the control states) are importable from their modules.
"""

from trustregion._base import PureClosure
from trustregion.control import LevenbergMarquardt, RadiusControl, ScaledTrustRadius, TrustRadius
from trustregion.curvature import (
    Curvature,
    Damped,
    GaussNewton,
    Hessian,
    KLHessian,
    ResidualGaussNewton,
    StepProblem,
)
from trustregion.drivers import RunReason, RunResult, least_squares, minimize, run
from trustregion.minimizer import TrustRegionMinimizer
from trustregion.operator import LinearOperator
from trustregion.optimizer import TrustRegionOptimizer
from trustregion.outputs import (
    BernoulliFisher,
    CategoricalFisher,
    DiagonalGaussianFisher,
    MultiCategoricalFisher,
    OutputFisher,
    SquaredError,
)
from trustregion.preconditioners import KFAC, Jacobi, Nystrom, Preconditioner
from trustregion.result import KLStepResult, RadiusStepResult, Reason, StepResult
from trustregion.search import BacktrackingLineSearch, LineSearch, NoLineSearch
from trustregion.solvers import ConjugateGradient, DenseSolver, Solver, SteihaugCG
from trustregion.solvers.secular import SecularSolver

__version__ = "0.1.0"

__all__ = [
    "KFAC",
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
    "Jacobi",
    "KLHessian",
    "KLStepResult",
    "LevenbergMarquardt",
    "LineSearch",
    "LinearOperator",
    "MultiCategoricalFisher",
    "NoLineSearch",
    "Nystrom",
    "OutputFisher",
    "Preconditioner",
    "PureClosure",
    "RadiusControl",
    "RadiusStepResult",
    "Reason",
    "ResidualGaussNewton",
    "RunReason",
    "RunResult",
    "ScaledTrustRadius",
    "SecularSolver",
    "Solver",
    "SquaredError",
    "SteihaugCG",
    "StepProblem",
    "StepResult",
    "TrustRadius",
    "TrustRegionMinimizer",
    "TrustRegionOptimizer",
    "least_squares",
    "minimize",
    "run",
]
