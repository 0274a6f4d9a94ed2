"""Two pieces of trust-region subproblem work that a radius-controlled step needs besides a solve.

* :func:`pull_back`: a solver that ignores the region (CG, the dense solver) may return a step
  outside it; scaling onto the boundary keeps the step in the region the control chose.
* :func:`escape_saddle`: at a stationary point (``‖g‖ <= gtol``) a solve has nothing to work
  with; a Lanczos probe from a random vector looks for negative curvature and, if it finds
  some, steps to the boundary along it (Nocedal & Wright, *Numerical Optimization*, 2nd ed.,
  2006, sec. 4.3: the "hard case" and saddle points).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from trustregion.operator import LinearOperator
from trustregion.result import SolverReason, SolverResult
from trustregion.solvers.base import Ball
from trustregion.solvers.lanczos import Eigenpair, smallest_eigenpair


def pull_back(solve: SolverResult, region: Ball) -> tuple[SolverResult, float]:
    """Scale a step that left ``region`` back onto its boundary; return it and its norm in the metric.

    Scaling ``s`` by ``c`` scales ``gᵀs`` by ``c`` and ``sᵀAs`` by ``c²``: no product is needed. A
    solver that measured its own region (a preconditioned Steihaug solve, in ``‖s‖_P``) reports
    the norm it kept in :attr:`~trustregion.result.SolverResult.region_norm`, which is used instead.
    """
    norm = solve.region_norm
    if math.isnan(norm):
        norm = region.norm(solve.direction, solve.curvature)
    if norm <= region.radius:
        return solve, norm
    factor = region.radius / norm
    scaled = replace(
        solve,
        direction=factor * solve.direction,
        curvature=factor * factor * solve.curvature,
        gradient_dot=factor * solve.gradient_dot,
        region_norm=solve.region_norm * factor,
    )
    return scaled, region.radius


def escape_saddle(
    operator: LinearOperator, gradient: Tensor, region: Ball, damping: float, iterations: int, seed: int
) -> tuple[SolverResult | None, float]:
    """A step to the boundary along negative curvature of ``A``, or ``None`` when none is found.

    Returns the step (or ``None``: the point is a second-order stationary point as far as
    ``iterations`` Lanczos products can tell) and the Ritz value ``θ`` the probe found. A
    positive semidefinite operator is not probed (``θ = nan``). The Ritz value counts as
    negative below ``-sqrt(ε) · scale``, rounding relative to the largest Ritz value.
    """
    if operator.positive_semidefinite:
        return None, math.nan
    probe = smallest_eigenpair(operator, gradient, iterations, seed=seed)
    if math.isnan(probe.value):
        zero = torch.zeros_like(gradient)
        return SolverResult(zero, SolverReason.NONFINITE, 0, math.nan, math.nan, math.nan), math.nan
    if probe.value >= -math.sqrt(torch.finfo(gradient.dtype).eps) * probe.scale:
        return None, probe.value
    return _step_along(probe, gradient, region, damping), probe.value


def _step_along(probe: Eigenpair, gradient: Tensor, region: Ball, damping: float) -> SolverResult:
    """``Δ v`` with ``v`` the Ritz vector signed so that ``gᵀv >= 0`` (the model decreases along it).

    ``‖v‖ = 1`` and ``vᵀAv = θ``, so ``sᵀ(A + μI)s = Δ²(θ + μ)`` needs no product.
    """
    direction = probe.vector if (gradient @ probe.vector).item() >= 0 else -probe.vector
    step = region.radius * direction
    curvature = region.radius**2 * (probe.value + damping)
    gradient_dot = (gradient @ step).item()
    return SolverResult(step, SolverReason.NEGATIVE_CURVATURE, probe.products, math.nan, curvature, gradient_dot)
