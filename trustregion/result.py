"""Result objects: what one solve and one optimizer step did, with numbers and a reason.

Modelled on :class:`scipy.optimize.OptimizeResult` and optimistix's ``RESULTS``: every step
leaves a record of why it stopped and what it measured, and every reason carries a sentence a
user can act on, so that a failed step is never silent.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

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
    INDEFINITE_PRECONDITIONER = "indefinite_preconditioner"
    """The preconditioned inner product ``rᵀP⁻¹r`` was not positive: ``P`` is not positive definite."""


_MESSAGES = {
    "accepted": "the step was taken",
    "line_search_exhausted": (
        "no trial point both improved the loss and kept the constraint within max_kl; the parameters are unchanged "
        "(usual now and then in TRPO; if it happens every step, check that the loss and the constraint are "
        "computed from the same batch, or raise the line search's max_backtracks)"
    ),
    "nonfinite_loss": "the loss was NaN or infinite; look for a log of 0 or an overflow in the closure",
    "nonfinite_constraint": "the constraint was NaN or infinite; look for a log of 0 in the KL",
    "nonfinite_gradient": "the gradient was NaN or infinite; look for a non-differentiable point or an overflow",
    "nonfinite_product": "a curvature product was NaN or infinite; the curvature's model outputs are not finite",
    "non_positive_curvature": (
        "the solver's direction has sᵀAs <= 0 or gᵀs <= 0; give the curvature damping (Damped(..., 0.1)) or a "
        "positive semidefinite operator"
    ),
    "zero_gradient": "the loss gradient is exactly zero: the loss does not depend on the parameters here",
    "insufficient_decrease": (
        "the loss fell by too little of the model's prediction (ρ <= η); the radius shrinks (or the damping "
        "grows) and the next step tries again"
    ),
    "converged": "‖∇loss‖ <= gtol and no negative curvature was found; the minimum is reached",
    "stalled": (
        "the step was refused with the control at its limit (TrustRadius's min_radius, LevenbergMarquardt's "
        "max_damping): the quadratic model does not predict the loss at any scale the control allows; stop here, "
        "or check that the gradient and the curvature belong to the loss"
    ),
}


class Reason(enum.Enum):
    """Why an optimizer step accepted or rejected its step; :attr:`message` says what to do about it."""

    ACCEPTED = "accepted"
    LINE_SEARCH_EXHAUSTED = "line_search_exhausted"
    NONFINITE_LOSS = "nonfinite_loss"
    NONFINITE_CONSTRAINT = "nonfinite_constraint"
    NONFINITE_GRADIENT = "nonfinite_gradient"
    NONFINITE_PRODUCT = "nonfinite_product"
    NON_POSITIVE_CURVATURE = "non_positive_curvature"
    ZERO_GRADIENT = "zero_gradient"
    INSUFFICIENT_DECREASE = "insufficient_decrease"
    """Radius control: the loss fell by at most ``η`` times the predicted reduction (``ρ <= η``)."""
    CONVERGED = "converged"
    """Radius control: ``‖∇loss‖ <= gtol`` and no negative curvature was found; no step taken."""
    STALLED = "stalled"
    """Radius control: a step at the control's limit (minimum radius, maximum damping) was refused."""

    @property
    def message(self) -> str:
        """What happened, in a sentence, and what to try."""
        return _MESSAGES[self.value]

    @property
    def nonfinite(self) -> bool:
        """True for the reasons caused by a NaN or an infinity."""
        return self.value.startswith("nonfinite")


@dataclass
class SolverResult:
    """The outcome of solving ``A s = g`` for the search direction ``s``.

    The scalars are the ones the solver already knows, so the optimizer needs no
    extra curvature product: ``curvature = sᵀAs`` and ``gradient_dot = gᵀs``. The
    operator itself counts the products (:attr:`LinearOperator.products`).
    """

    direction: torch.Tensor
    reason: SolverReason
    iterations: int
    relative_residual: float
    curvature: float
    gradient_dot: float
    region_norm: float = math.nan
    """The step's norm in the region the solver kept it in, when that is not the region's own
    metric (a preconditioned :class:`~trustregion.SteihaugCG` measures ``‖s‖_P``); else NaN."""

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
class StepResult:
    """What one optimizer step did: the fields both optimizers share.

    Symbols follow ``docs/math.md``: ``g`` is the negative loss gradient and ``s``
    the solver's direction. :class:`KLStepResult` (from
    :class:`~trustregion.TrustRegionOptimizer`) and :class:`RadiusStepResult` (from
    :class:`~trustregion.TrustRegionMinimizer`) add what their algorithm measures.
    """

    accepted: bool
    reason: Reason
    loss_before: float
    loss_after: float
    expected_improvement: float = math.nan
    actual_improvement: float = math.nan
    constraint_after: float | None = None
    gradient_norm: float = math.nan
    solver_iterations: int = 0
    solver_residual: float = math.nan
    solver_reason: SolverReason | None = None
    closure_calls: int = 0
    curvature_products: int = 0

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


@dataclass
class KLStepResult(StepResult):
    """A KL-constrained step: ``Δθ = β s`` with ``β = sqrt(2δ / sᵀAs)``, then a line search.

    ``expected_improvement`` is the linear model's ``β gᵀs``; ``step_fraction`` the
    multiple of ``Δθ`` the line search took (0 when rejected).
    """

    step_scale: float = math.nan
    step_fraction: float = 0.0
    backtracks: int = 0


@dataclass
class RadiusStepResult(StepResult):
    """A radius-controlled step: ``Δθ = s`` inside the region, taken or not on ``ρ``.

    ``expected_improvement`` is the quadratic model's predicted reduction
    ``gᵀs - ½ sᵀAs``; :attr:`improvement_ratio` is the ``ρ`` that drove the control,
    with the rounding allowance ``rounding`` added to both reductions.
    ``step_norm`` is ``‖s‖`` in the region's metric, ``damping`` the ``μ`` the solver
    saw, and ``min_curvature`` the Lanczos estimate of ``λ_min(A)`` when the
    curvature was probed at a stationary point (``nan`` otherwise).
    """

    radius: float = math.nan
    damping: float = 0.0
    step_norm: float = math.nan
    min_curvature: float = math.nan
    rounding: float = 0.0

    @property
    def improvement_ratio(self) -> float:
        """``ρ = (actual + r) / (expected + r)`` with ``r`` = :attr:`rounding`: the ratio the control judged.

        ``-inf`` for a trial point whose loss was not finite or a prediction that was not positive
        (the control refuses those); ``nan`` when no point was tried.
        """
        if math.isnan(self.expected_improvement):
            return math.nan
        return adjusted_ratio(self.actual_improvement, self.expected_improvement, self.rounding)


def adjusted_ratio(actual: float, predicted: float, rounding: float) -> float:
    """``ρ = (actual + r) / (predicted + r)``; ``-inf`` unless both are finite and ``predicted > 0``.

    ``r`` is the rounding level of the loss: once both reductions are at that level their ratio
    is noise, and ``r`` pulls it to 1 (Conn, Gould & Toint, *Trust-Region Methods*, 2000, sec. 17.4).
    """
    if not (math.isfinite(actual) and math.isfinite(predicted)) or predicted <= 0:
        return -math.inf
    return (actual + rounding) / (predicted + rounding)
