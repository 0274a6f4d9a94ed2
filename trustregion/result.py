"""Result objects: what one solve and one optimizer step did, with numbers.

Modelled on :class:`scipy.optimize.OptimizeResult`: every step leaves a record of
why it stopped and what it measured, so that a failed step is never silent.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import torch


class SolverReason(enum.Enum):
    """Why an iterative solver of ``A s = g`` stopped."""

    CONVERGED = "converged"
    """The relative residual ``‖g - A s‖ / ‖g‖`` fell to the tolerance."""
    MAX_ITERATIONS = "max_iterations"
    """The iteration cap was reached (the usual case in TRPO: a truncated solve)."""
    NEGATIVE_CURVATURE = "negative_curvature"
    """A search direction ``p`` had ``pᵀAp <= 0``; the last good iterate is returned."""
    BOUNDARY = "boundary"
    """A truncated (Steihaug) solve reached the trust-region boundary."""
    NONFINITE = "nonfinite"
    """A curvature product or a preconditioned residual was NaN or infinite."""
    ZERO_RHS = "zero_rhs"
    """The right-hand side ``g`` was exactly zero; ``s = 0``."""
    DIRECT = "direct"
    """A dense (direct) factorisation was used."""


class Reason(enum.Enum):
    """Why :meth:`TrustRegionOptimizer.step` accepted or rejected its step."""

    ACCEPTED = "accepted"
    LINE_SEARCH_EXHAUSTED = "line_search_exhausted"
    NONFINITE_LOSS = "nonfinite_loss"
    NONFINITE_CONSTRAINT = "nonfinite_constraint"
    NONFINITE_GRADIENT = "nonfinite_gradient"
    NONFINITE_PRODUCT = "nonfinite_product"
    NON_POSITIVE_CURVATURE = "non_positive_curvature"
    ZERO_GRADIENT = "zero_gradient"
    INSUFFICIENT_DECREASE = "insufficient_decrease"
    """Radius controller: the loss fell by at most ``η`` times the predicted reduction (``ρ <= η``)."""
    CONVERGED = "converged"
    """Radius controller: ``‖∇loss‖ <= gtol`` and no negative curvature was found; no step taken."""


@dataclass
class SolverResult:
    """The outcome of solving ``A s = g`` for the search direction ``s``.

    The scalars are the ones the solver already knows, so the optimizer needs no
    extra curvature product: ``curvature = sᵀAs`` and ``gradient_dot = gᵀs``.
    """

    direction: torch.Tensor
    reason: SolverReason
    iterations: int
    products: int
    relative_residual: float
    curvature: float
    gradient_dot: float

    @property
    def usable(self) -> bool:
        """True when the direction is finite with ``sᵀAs > 0`` and ``gᵀs > 0``."""
        return (
            self.reason is not SolverReason.NONFINITE
            and math.isfinite(self.curvature)
            and self.curvature > 0.0
            and self.gradient_dot > 0.0
        )


@dataclass
class SearchResult:
    """The outcome of a step controller (line search or radius rule).

    ``fraction`` is the accepted multiple of the proposed step (0 when rejected).
    A radius controller also returns its next state (e.g. ``{"trust_radius": Δ}``),
    which the optimizer keeps in its ``state`` (and so in ``state_dict()``).
    """

    accepted: bool
    fraction: float
    loss: float
    constraint: float | None
    backtracks: int
    closure_calls: int
    controller_state: dict[str, float] | None = None


@dataclass
class StepResult:
    """Everything one :meth:`TrustRegionOptimizer.step` did, with its numbers.

    Symbols follow ``docs/math.md``: ``g`` is the negative loss gradient, ``s`` the
    solver's direction, ``β = sqrt(2δ / sᵀAs)`` the step scale, so the proposed step
    is ``Δθ = β s`` and the expected improvement (linear model) is ``β gᵀs``.

    Under a radius controller (:class:`~trustregion.TrustRadius`,
    :class:`~trustregion.LevenbergMarquardt`) there is no ``β``: ``Δθ = s`` lies in
    the trust region of radius ``radius``, ``expected_improvement`` is the
    quadratic model's predicted reduction ``gᵀs - ½ sᵀAs`` and
    :attr:`improvement_ratio` is the ratio ``ρ`` that drives the radius.
    ``extra`` then holds ``step_norm`` (``‖s‖`` in the region's metric), the
    ``damping`` used, and ``min_curvature`` when the curvature was probed at a
    stationary point.
    """

    accepted: bool
    reason: Reason
    loss_before: float
    loss_after: float
    expected_improvement: float = math.nan
    actual_improvement: float = math.nan
    constraint_after: float | None = None
    step_scale: float = math.nan
    step_fraction: float = 0.0
    gradient_norm: float = math.nan
    solver_iterations: int = 0
    solver_residual: float = math.nan
    solver_reason: SolverReason | None = None
    backtracks: int = 0
    closure_calls: int = 0
    curvature_products: int = 0
    radius: float = math.nan
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def kl_after(self) -> float | None:
        """Alias of ``constraint_after`` in the RL vocabulary (mean KL after the step)."""
        return self.constraint_after

    @property
    def improvement_ratio(self) -> float:
        """Actual over expected improvement (``nan`` when nothing was expected)."""
        if not self.expected_improvement or math.isnan(self.expected_improvement):
            return math.nan
        return self.actual_improvement / self.expected_improvement
