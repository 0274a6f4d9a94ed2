"""Levenberg-Marquardt in its trust-region formulation: a radius on ``‖D s‖`` with MINPACK's ``lmder`` update."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from trustregion._validation import check_interval, check_nonnegative, check_positive
from trustregion._vectors import flatten
from trustregion.control.base import RadiusControl
from trustregion.control.levenberg_marquardt import running_scale
from trustregion.solvers.secular import ScaledBall

_ON_BOUNDARY = 1.0 - 1e-5
"""Without a secular solve's report, a step counts as on the boundary when ``‖D s‖ >= (1 - 1e-5) Δ``."""


@dataclass(frozen=True)
class ScaledRadiusState:
    """The radius ``Δ`` of ``‖D s‖``, the ``λ`` the next secular solve starts from, the scale ``D``.

    ``scale`` is ``None`` until the first point is seen; ``moved`` says whether a step was taken yet
    (MINPACK's first iteration, which fits ``Δ`` to the first step, lasts until then).
    """

    radius: float
    damping: float = 0.0
    scale: tuple[float, ...] | None = None
    moved: bool = False


class ScaledTrustRadius(RadiusControl):
    r"""MINPACK's ``lmder`` radius: ``‖D s‖ <= Δ`` with Moré's scaling, for :class:`~trustregion.SecularSolver`.

    The trust-region formulation of Levenberg-Marquardt (Moré, "The Levenberg-Marquardt
    algorithm: implementation and theory", 1978): the control sizes the region in the scaled
    norm ``‖D s‖``, ``D_j`` the largest ``sqrt(A_jj)`` seen so far (the norm of the Jacobian's
    column ``j`` for ``A = JᵀJ``), and :class:`~trustregion.SecularSolver` finds the
    Levenberg-Marquardt parameter ``λ`` with ``‖D s(λ)‖ ≈ Δ`` on every step, so each step has a
    controlled scaled length. :class:`~trustregion.LevenbergMarquardt` is the damping
    formulation, which adapts ``λ`` itself and lets the step length follow. With ``ρ`` the
    ratio of actual to predicted reduction and ``s`` the step:

    * the first radius is ``factor · ‖D θ₀‖`` (``factor`` if that is 0), and until a step is
      taken ``Δ ← min(Δ, ‖D s‖)`` before each update;
    * ``ρ <= 1/4``: ``Δ ← t · min(Δ, 10 ‖D s‖)`` and ``λ ← λ / t``, with ``t = 1/2`` when the
      loss did not rise, else ``t = ½ gᵀs / (gᵀs - actual)`` (the minimiser of the quadratic
      through the loss at both ends and its slope at the start), kept in ``[1/10, 1/2]``;
    * otherwise, when ``λ = 0`` (the Gauss-Newton step was inside) or ``ρ >= 3/4``:
      ``Δ ← 2 ‖D s‖`` and ``λ ← λ / 2``;

    and the step is taken when ``ρ >= η`` (MINPACK's ``10⁻⁴``). ``λ`` (kept in the state) is
    where the next secular solve starts. The solver leaves the ``λ`` it found on the region
    (:class:`~trustregion.solvers.secular.ScaledBall`); with another solver, a step shorter than
    ``Δ`` counts as ``λ = 0``.

    Args:
        factor: the first radius relative to ``‖D θ₀‖`` (MINPACK's 100).
        eta: acceptance threshold ``η ∈ [0, 1/4)``.
        params: the parameters, read once at the first step for ``‖D θ₀‖``; without them the
            first radius is unbounded, so the first step is the Gauss-Newton step and the
            radius starts from its length (:func:`~trustregion.least_squares` passes them).
        min_radius: a step refused at this radius reports ``Reason.STALLED``.
        gtol: first-order tolerance on ``‖∇loss‖`` (see :class:`RadiusControl`).
    """

    state_type = ScaledRadiusState

    def __init__(
        self,
        factor: float = 100.0,
        eta: float = 1e-4,
        *,
        params: Sequence[Tensor] | None = None,
        min_radius: float = 0.0,
        gtol: float = 1e-5,
    ) -> None:
        super().__init__(metric="euclidean", gtol=gtol)
        self.factor = check_positive("factor", factor, "MINPACK uses 100")
        self.eta = check_interval("eta", eta, 0.0, 0.25, "MINPACK takes steps with ρ >= 1e-4", closed="left")
        self.min_radius = check_nonnegative("min_radius", min_radius)
        if params is not None and not all(isinstance(p, Tensor) for p in params):
            raise TypeError("params must be the optimized tensors (a list of torch.Tensor), or None")
        self.params = None if params is None else list(params)
        self.issued: ScaledBall | None = None
        """The last region handed out; its report carries the secular solve's ``λ`` to :meth:`after_step`."""

    def init(self) -> ScaledRadiusState:
        return ScaledRadiusState(math.inf)

    def region(self, state: ScaledRadiusState) -> ScaledBall:
        scale = None if state.scale is None else torch.tensor(state.scale, dtype=torch.float64)
        self.issued = ScaledBall(state.radius, scale=scale, damping=state.damping)
        return self.issued

    def observe(self, state: ScaledRadiusState, diagonal: Callable[[], Tensor]) -> ScaledRadiusState:
        scale = running_scale(state.scale, diagonal())
        radius = state.radius
        if state.scale is None and self.params is not None:  # the first point: Δ₀ = factor ‖D θ₀‖
            point = flatten([p.detach() for p in self.params]).double().cpu()
            length = torch.linalg.vector_norm(torch.tensor(scale, dtype=torch.float64) * point).item()
            radius = self.factor * length if length > 0 else self.factor
        return ScaledRadiusState(radius, state.damping, scale, state.moved)

    def stalled(self, state: ScaledRadiusState) -> bool:
        return state.radius <= self.min_radius

    def accept(self, ratio: float) -> bool:
        return ratio >= self.eta

    def update(self, state: ScaledRadiusState, ratio: float, step_norm: float) -> ScaledRadiusState:
        """lmder's update with nothing known of the solve (a step shorter than ``Δ`` counts as ``λ = 0``)."""
        return self._next(state, ratio, step_norm, math.nan, math.nan)

    def after_step(
        self, state: ScaledRadiusState, ratio: float, step_norm: float, step: Tensor, predicted: float
    ) -> ScaledRadiusState:
        """lmder's update, with the ``λ`` and ``gᵀs`` of the secular solve that gave ``s``."""
        report = self.issued.report if self.issued is not None else None
        if report is None or math.isnan(report.damping):
            return self._next(state, ratio, step_norm, math.nan, predicted)
        shortened = step_norm / report.scaled_norm if report.scaled_norm > 0 else 1.0  # scaled onto the region
        return self._next(state, ratio, step_norm, report.damping, predicted, shortened * report.gradient_dot)

    def _next(
        self,
        state: ScaledRadiusState,
        ratio: float,
        length: float,
        damping: float,
        predicted: float,
        gradient_dot: float = math.nan,
    ) -> ScaledRadiusState:
        """The state after a step of scaled length ``length`` found with ``λ = damping`` (NaN: unknown)."""
        radius = state.radius if state.moved else min(state.radius, length)
        interior = damping == 0.0 if not math.isnan(damping) else length < _ON_BOUNDARY * state.radius
        damping = state.damping if math.isnan(damping) else damping
        if ratio <= 0.25:
            shrink = _shrink_factor(ratio, predicted, gradient_dot)
            radius, damping = shrink * min(radius, 10.0 * length), damping / shrink
        elif interior or ratio >= 0.75:
            radius, damping = 2.0 * length, 0.5 * damping
        if not (radius > 0.0 and math.isfinite(damping)):  # a zero step: keep the radius it was tried in
            radius, damping = state.radius, state.damping
        return ScaledRadiusState(radius, damping, state.scale, state.moved or self.accept(ratio))

    def __repr__(self) -> str:
        return (
            f"ScaledTrustRadius(factor={self.factor}, eta={self.eta}, min_radius={self.min_radius}, gtol={self.gtol})"
        )


def _shrink_factor(ratio: float, predicted: float, gradient_dot: float) -> float:
    """lmder's ``t ∈ [1/10, 1/2]``: ½ if the loss did not rise, else ``½ gᵀs / (gᵀs - actual)``.

    ``actual = ρ · predicted`` (``ρ`` is ``-inf`` at a non-finite trial point, which gives 1/10);
    without ``gᵀs`` the predicted reduction stands in for it (``predicted <= gᵀs <= 2 predicted``
    for a Levenberg-Marquardt step).
    """
    if ratio >= 0.0:
        return 0.5
    slope = gradient_dot if math.isfinite(gradient_dot) and gradient_dot > 0 else predicted
    actual = ratio * predicted if math.isfinite(ratio) else -math.inf
    if not (math.isfinite(slope) and slope > 0 and math.isfinite(actual)):
        return 0.1
    return min(max(0.5 * slope / (slope - actual), 0.1), 0.5)
