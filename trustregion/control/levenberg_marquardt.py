"""Levenberg-Marquardt damping as a radius control."""

from __future__ import annotations

from dataclasses import dataclass

from trustregion._validation import check_interval, check_positive
from trustregion.control.base import RadiusControl

_MAX_GROWTH = 2.0**30


@dataclass(frozen=True)
class DampingState:
    """The damping ``μ`` of the next step and ``ν``, its growth factor after a rejection."""

    damping: float
    growth: float = 2.0


class LevenbergMarquardt(RadiusControl):
    r"""Levenberg-Marquardt damping: the step solves ``(A + μI) s = g`` and ``μ`` adapts to ``ρ``.

    Meant for a positive semidefinite ``A``, above all the Gauss-Newton matrix
    ``JᵀJ`` of a least-squares loss (:class:`~trustregion.ResidualGaussNewton`):
    large ``μ`` gives a short gradient step, small ``μ`` the Gauss-Newton step.
    ``ρ`` compares the actual reduction with the undamped model's prediction
    ``gᵀs - ½ sᵀAs``. The update is Nielsen's (1999), as given by Madsen, Nielsen
    & Tingleff, *Methods for Non-Linear Least Squares Problems* (2004, sec. 3.2):

    * a taken step (``ρ > η``): ``μ ← μ · max(1/3, 1 - (2ρ - 1)³)`` and ``ν ← 2``;
    * a rejected step: ``μ ← μ · ν`` and ``ν ← 2ν``,

    so ``μ`` shrinks smoothly after good steps and grows ever faster after
    consecutive failures. ``μ`` is kept in ``[min_damping, max_damping]``; a step
    refused at ``max_damping`` is reported as ``Reason.STALLED``. ``μ``
    is absolute: an ``initial_damping`` small compared with the curvature's scale
    (``‖JᵀJ‖``) starts near Gauss-Newton.

    Args:
        initial_damping: ``μ₀ > 0``.
        eta: acceptance threshold ``η ∈ [0, 1/4)`` (default ``0``: any decrease).
        min_damping: lower bound of ``μ``.
        max_damping: upper bound of ``μ``.
        gtol: first-order tolerance on ``‖∇loss‖`` (see :class:`RadiusControl`).
    """

    state_type = DampingState

    def __init__(
        self,
        initial_damping: float = 1e-3,
        eta: float = 0.0,
        *,
        min_damping: float = 1e-12,
        max_damping: float = 1e12,
        gtol: float = 1e-5,
    ) -> None:
        super().__init__(metric="euclidean", gtol=gtol)
        self.initial_damping = check_positive("initial_damping", initial_damping)
        self.min_damping = check_positive("min_damping", min_damping)
        self.max_damping = check_positive("max_damping", max_damping)
        if not min_damping <= initial_damping <= max_damping:
            raise ValueError(
                f"initial_damping ({initial_damping}) must lie in [min_damping, max_damping] "
                f"= [{min_damping}, {max_damping}]"
            )
        self.eta = check_interval("eta", eta, 0.0, 0.25, "0 accepts any decrease", closed="left")

    def init(self) -> DampingState:
        return DampingState(self.initial_damping)

    def damping(self, state: DampingState) -> float:
        return state.damping

    def stalled(self, state: DampingState) -> bool:
        return state.damping >= self.max_damping

    def accept(self, ratio: float) -> bool:
        return ratio > self.eta

    def update(self, state: DampingState, ratio: float, step_norm: float) -> DampingState:
        if self.accept(ratio):
            damping, growth = state.damping * max(1.0 / 3.0, 1.0 - (2.0 * ratio - 1.0) ** 3), 2.0
        else:
            damping, growth = state.damping * state.growth, 2.0 * state.growth
        damping = min(max(damping, self.min_damping), self.max_damping)
        return DampingState(damping, min(growth, _MAX_GROWTH))

    def __repr__(self) -> str:
        return f"LevenbergMarquardt(initial_damping={self.initial_damping}, eta={self.eta}, gtol={self.gtol})"
