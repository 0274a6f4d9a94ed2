"""The step-controller interface: what to do with the proposed step ``Δθ = β s``."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from trustregion.result import SearchResult

Trial = Callable[[float], "TrialPoint"]


@dataclass(frozen=True)
class TrialPoint:
    """The closure's values at ``θ_old + fraction · Δθ`` (already reduced)."""

    loss: float
    constraint: float | None


@dataclass(frozen=True)
class SearchProblem:
    """What a step controller needs to decide.

    Attributes:
        trial: ``fraction -> TrialPoint``; moves the parameters to
            ``θ_old + fraction · Δθ`` and evaluates the closure there (one call).
        loss_before: the loss at ``θ_old``.
        expected_improvement: ``β gᵀs``, the decrease of the loss the linear model
            predicts for the full step.
        max_constraint: ``δ``, the bound on the constraint (mean KL).
        controller_state: a radius controller's state for this step (e.g.
            ``{"trust_radius": Δ}``); empty under a line search.
        step_norm: ``‖Δθ‖`` in the trust region's metric (radius controllers only).
        loss_rounding: the rounding level of the loss, ``10 ε max(1, |loss_before|)``
            with ``ε`` the parameters' machine epsilon (radius controllers only).

    Under a radius controller ``Δθ = s`` (no ``β``) and ``expected_improvement``
    is the quadratic model's predicted reduction ``gᵀs - ½ sᵀAs``.
    """

    trial: Trial
    loss_before: float
    expected_improvement: float
    max_constraint: float
    controller_state: Mapping[str, float] = field(default_factory=dict)
    step_norm: float = math.nan
    loss_rounding: float = 0.0


class LineSearch(abc.ABC):
    """Decides which multiple of the proposed step to take, if any.

    It only calls ``problem.trial``; the optimizer owns the parameters and puts
    them back bit for bit when the result is not accepted.
    """

    @abc.abstractmethod
    def __call__(self, problem: SearchProblem) -> SearchResult:
        """Return the accepted fraction, or ``accepted=False``."""


class RadiusController(LineSearch):
    r"""A step controller of the classic trust-region kind: it sets the region *before* the solve.

    The optimizer asks for the region, lets the solver minimise the quadratic
    model ``q(s) = ½ sᵀAs - gᵀs`` inside it (no ``β`` rescaling), evaluates the
    closure once at ``θ + s`` and calls the controller with the predicted
    reduction ``gᵀs - ½ sᵀAs``. The controller accepts or rejects on the ratio

    .. math:: \rho = \frac{\text{loss}(\theta) - \text{loss}(\theta + s) + r}{g^\top s - \tfrac12 s^\top A s + r}

    where ``r = 10 ε max(1, |loss(θ)|)`` is the rounding level of the loss: once
    both reductions are at that level their ratio is noise, and ``r`` pulls it to
    ``1`` (Conn, Gould & Toint, *Trust-Region Methods*, 2000, chapter 17) instead
    of letting the radius collapse; an accepted step can then raise the loss by
    at most about ``r``. The controller returns its next state, which the optimizer stores in its ``state`` so
    that ``state_dict()`` / ``load_state_dict()`` carry it. The state keys the
    optimizer reads are ``"trust_radius"`` (``Δ``, default ``∞``) and ``"damping"``
    (``μ``, default ``0``: the solver then sees ``A + μI``).

    Subclasses give :meth:`initial_state`, :meth:`accept` and :meth:`update`.

    Attributes:
        metric: the norm of the region, ``"euclidean"`` or ``"operator"``
            (``‖s‖_A``; see :class:`~trustregion.TrustRegion`).
        gtol: at ``‖∇loss‖ <= gtol`` the optimizer checks the second-order
            condition instead of solving, and reports ``Reason.CONVERGED`` when
            it holds.
        probe_iterations: Lanczos products spent on that check.
    """

    def __init__(self, *, metric: str = "euclidean", gtol: float = 1e-5, probe_iterations: int = 10) -> None:
        if metric not in ("euclidean", "operator"):
            raise ValueError(f"metric must be 'euclidean' or 'operator' (got {metric!r})")
        if isinstance(gtol, bool) or not isinstance(gtol, (int, float)) or not math.isfinite(gtol) or gtol < 0:
            raise ValueError(f"gtol must be a finite number >= 0 (got {gtol!r}); it bounds ‖∇loss‖ at convergence")
        if isinstance(probe_iterations, bool) or not isinstance(probe_iterations, int) or probe_iterations < 1:
            raise ValueError(f"probe_iterations must be an integer >= 1 (got {probe_iterations!r})")
        self.metric = metric
        self.gtol = float(gtol)
        self.probe_iterations = probe_iterations

    @abc.abstractmethod
    def initial_state(self) -> dict[str, float]:
        """The state before the first step, e.g. ``{"trust_radius": 1.0}``."""

    @abc.abstractmethod
    def accept(self, ratio: float) -> bool:
        """Whether a step with ratio ``ρ`` (``-inf`` when not finite) is taken."""

    @abc.abstractmethod
    def update(self, state: Mapping[str, float], ratio: float, step_norm: float) -> dict[str, float]:
        """The next state after a step with ratio ``ρ`` and length ``step_norm``."""

    def __call__(self, problem: SearchProblem) -> SearchResult:
        """Evaluate the full step once, decide on ``ρ`` and return the next state."""
        point = problem.trial(1.0)
        ratio = improvement_ratio(problem.loss_before, point.loss, problem.expected_improvement, problem.loss_rounding)
        accepted = self.accept(ratio)
        state = self.update(problem.controller_state, ratio, problem.step_norm)
        fraction = 1.0 if accepted else 0.0
        return SearchResult(accepted, fraction, point.loss, point.constraint, 0, 1, controller_state=state)


def improvement_ratio(
    loss_before: float, loss_after: float, predicted_reduction: float, rounding: float = 0.0
) -> float:
    """``ρ = (actual + r) / (predicted + r)``; ``-inf`` unless both are finite and ``predicted > 0``."""
    actual = loss_before - loss_after
    if not (math.isfinite(actual) and math.isfinite(predicted_reduction)) or predicted_reduction <= 0:
        return -math.inf
    return (actual + rounding) / (predicted_reduction + rounding)
