"""Gauss-Newton matrices of least-squares losses ``½ c ‖r(θ)‖²`` from a residual function."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor
from torch.utils._pytree import tree_leaves

from trustregion.curvature.base import Curvature, StepProblem
from trustregion.curvature.gauss_newton import GaussNewton
from trustregion.operator import LinearOperator
from trustregion.outputs import SquaredError

Residuals = Callable[..., Tensor]


class ResidualGaussNewton(Curvature):
    r"""``A = c JᵀJ`` for the loss ``L(θ) = ½ c ‖r(θ)‖²``, with ``J = ∂r/∂θ``.

    The Gauss-Newton matrix drops the ``Σ r_i ∇²r_i`` term of the Hessian
    ``∇²L = c (JᵀJ + Σ r_i ∇²r_i)``: it is positive semidefinite by
    construction and exact when the residuals vanish or are linear. Products
    reuse the cached linearisation of :class:`~trustregion.GaussNewton`
    (``J v`` and ``Jᵀu`` without re-running ``r``). Pair it with
    :class:`~trustregion.LevenbergMarquardt` (adaptive damping ``A + μI``) or
    :class:`~trustregion.TrustRadius` (a trust-region Gauss-Newton method) in a
    :class:`~trustregion.TrustRegionMinimizer`, or let
    :func:`~trustregion.least_squares` do both and the loop::

        fit = ResidualGaussNewton(lambda a, b: a * torch.exp(-b * t) - y)
        opt = TrustRegionMinimizer([a, b], curvature=fit, control=LevenbergMarquardt())
        result = trustregion.run(opt, fit.closure([a, b]))   # L = ½ ‖r‖², matching A

    Args:
        residuals: ``residuals(*params) -> r``, a pure function of the optimized
            tensors (in the optimizer's order) returning a tensor of any shape
            (or a tuple of tensors, concatenated in the loss).
        scale: ``c > 0``; ``1/N`` makes ``L`` the half mean squared residual.
    """

    def __init__(self, residuals: Residuals, scale: float = 1.0) -> None:
        self._gauss_newton = GaussNewton(residuals, SquaredError(scale))
        self.residuals = residuals
        self.scale = float(scale)

    def build(self, problem: StepProblem) -> LinearOperator:
        return self._gauss_newton.build(problem)

    def loss(self, *params: Tensor) -> Tensor:
        """``L = ½ c ‖r(params)‖²``, the loss whose Gauss-Newton matrix this is."""
        return 0.5 * self.scale * sum(r.square().sum() for r in tree_leaves(self.residuals(*params)))

    def closure(self, params: Sequence[Tensor]) -> Callable[[], Tensor]:
        """A loss-only closure evaluating :meth:`loss` at the current ``params``."""
        params = list(params)
        return lambda: self.loss(*params)

    def __repr__(self) -> str:
        return f"ResidualGaussNewton(scale={self.scale})"
