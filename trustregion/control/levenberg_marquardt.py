"""Levenberg-Marquardt damping as a radius control."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from trustregion._validation import check_interval, check_positive
from trustregion.control.base import RadiusControl

_MAX_GROWTH = 2.0**30


@dataclass(frozen=True)
class DampingState:
    """The damping ``μ`` of the next step, ``ν`` its growth factor after a rejection, and the scale ``D``.

    ``scale`` is ``None`` for an unscaled control, else the running ``D_j = max_k sqrt((JᵀJ)_jj)``.
    """

    damping: float
    growth: float = 2.0
    scale: tuple[float, ...] | None = None


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
    refused at ``max_damping`` is reported as ``Reason.STALLED``.

    With ``curvature_floor=True`` a refused step also lifts ``μ`` to at least
    ``κ = sᵀAs / ‖D s‖²``, the model's curvature along the refused step ``s`` per
    unit of (scaled) length: along ``s`` the damped step is ``(κ + μ)/(κ + μ')``
    times as long, so ``μ' >= κ`` at least halves it where the curvature
    dominates (a Gauss-Newton step too long for the region it is trusted in), which
    doubling ``μ`` reaches only after ``log₂(κ/μ)`` further refusals. MINPACK's
    ``lmder`` gets there by solving ``‖D s(μ)‖ = Δ`` on the Jacobian's QR factors;
    ``κ`` comes from the predicted reduction, ``gᵀs - ½ sᵀAs = ½ sᵀAs + μ ‖D s‖²``
    for the damped solve, so it costs no product.

    With ``scaled=True`` the damping is ``μ D²`` instead of ``μ I``, where ``D_j`` is
    the largest ``sqrt(A_jj)`` (the norm of the Jacobian's column ``j`` for
    ``A = JᵀJ``) seen so far: Moré's scaling in MINPACK's ``lmder`` ("The
    Levenberg-Marquardt algorithm: implementation and theory", 1978), which makes
    the method invariant to the units of each parameter. ``μ`` is then relative
    to the curvature's own diagonal (Marquardt's ``μ diag(JᵀJ)``), so
    ``initial_damping`` needs no tuning to the problem's scale. ``diag(A)`` costs
    ``n`` products at each accepted point (an estimate above 256 parameters, see
    :meth:`~trustregion.LinearOperator.diagonal`). ``μ``
    is absolute: an ``initial_damping`` small compared with the curvature's scale
    (``‖JᵀJ‖``) starts near Gauss-Newton.

    Args:
        initial_damping: ``μ₀ > 0``.
        eta: acceptance threshold ``η ∈ [0, 1/4)`` (default ``0``: any decrease).
        min_damping: lower bound of ``μ``.
        max_damping: upper bound of ``μ``.
        gtol: first-order tolerance on ``‖∇loss‖`` (see :class:`RadiusControl`).
        scaled: damp with ``μ D²`` (Moré's scaling) instead of ``μ I``.
        curvature_floor: after a refused step, ``μ >= sᵀAs / ‖D s‖²`` (see above;
            :func:`~trustregion.least_squares` turns it on).
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
        scaled: bool = False,
        curvature_floor: bool = False,
    ) -> None:
        super().__init__(metric="euclidean", gtol=gtol)
        if not isinstance(scaled, bool):
            raise TypeError(f"scaled must be True or False (got {scaled!r})")
        self.scaled = scaled
        if not isinstance(curvature_floor, bool):
            raise TypeError(f"curvature_floor must be True or False (got {curvature_floor!r})")
        self.curvature_floor = curvature_floor
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

    def shift(self, state: DampingState) -> float | Tensor:
        if state.scale is None:
            return state.damping
        return state.damping * torch.tensor(state.scale, dtype=torch.float64).square()

    def observe(self, state: DampingState, diagonal: Callable[[], Tensor]) -> DampingState:
        if not self.scaled:
            return state
        return replace(state, scale=running_scale(state.scale, diagonal()))

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
        return DampingState(damping, min(growth, _MAX_GROWTH), state.scale)

    def after_step(
        self, state: DampingState, ratio: float, step_norm: float, step: Tensor, predicted: float
    ) -> DampingState:
        """:meth:`update`, and with ``curvature_floor`` a refused step's ``μ`` at least ``sᵀAs / ‖D s‖²``."""
        updated = self.update(state, ratio, step_norm)
        if not self.curvature_floor or self.accept(ratio):
            return updated
        length = self._scaled_length(state, step)
        if not (math.isfinite(predicted) and 0.0 < length < math.inf):
            return updated
        curvature = max(2.0 * (predicted - state.damping * length**2), 0.0) / length**2
        return replace(updated, damping=min(max(updated.damping, curvature), self.max_damping))

    def _scaled_length(self, state: DampingState, step: Tensor) -> float:
        """``‖D s‖`` (``‖s‖`` unscaled)."""
        if state.scale is None:
            return torch.linalg.vector_norm(step).item()
        scale = torch.tensor(state.scale, dtype=step.dtype, device=step.device)
        return torch.linalg.vector_norm(scale * step).item()

    def __repr__(self) -> str:
        return (
            f"LevenbergMarquardt(initial_damping={self.initial_damping}, eta={self.eta}, gtol={self.gtol}, "
            f"scaled={self.scaled}, curvature_floor={self.curvature_floor})"
        )


def running_scale(previous: tuple[float, ...] | None, diagonal: Tensor) -> tuple[float, ...]:
    """Moré's ``D_j = max(previous D_j, sqrt(A_jj))``; at the first point a zero column starts at 1 (MINPACK)."""
    scale = diagonal.clamp(min=0.0).sqrt().double().cpu()
    if previous is None:
        return tuple(torch.where(scale > 0, scale, torch.ones_like(scale)).tolist())
    return tuple(torch.maximum(scale, torch.tensor(previous, dtype=torch.float64)).tolist())
