"""The classic trust-radius rule."""

from __future__ import annotations

from dataclasses import dataclass

from trustregion._validation import check_interval, check_positive
from trustregion.control.base import RadiusControl
from trustregion.solvers.base import Ball

_ON_BOUNDARY = 1.0 - 1e-5
"""A step counts as on the boundary when ``‖s‖ >= (1 - 1e-5) Δ`` (rounding of the norm)."""


@dataclass(frozen=True)
class TrustRadiusState:
    """The radius ``Δ`` of the next step."""

    radius: float


class TrustRadius(RadiusControl):
    r"""The trust-region radius rule of Nocedal & Wright, *Numerical Optimization*, 2nd ed. (2006), Algorithm 4.1.

    With ``ρ`` the ratio of actual to predicted reduction of the step ``s``:

    * ``ρ < 1/4``: shrink, ``Δ ← max(Δ / 4, Δ_min)``;
    * ``ρ > 3/4`` and ``‖s‖ = Δ`` (the model was trusted up to the boundary):
      expand, ``Δ ← min(2Δ, Δ̂)``;
    * otherwise keep ``Δ``;

    and take the step when ``ρ > η``. The constants ``1/4, 3/4, 1/4, 2`` are
    those of Algorithm 4.1, which asks for ``η ∈ [0, 1/4)``; the defaults
    ``Δ₀ = 1``, ``Δ̂ = 1000`` and ``η = 0.15`` are those of
    :func:`scipy.optimize.minimize` (``trust-ncg``), so the two iterate alike.
    With ``curvature=Hessian()`` and the :class:`~trustregion.SteihaugCG` solver,
    a :class:`~trustregion.TrustRegionMinimizer` is trust-region Newton-CG
    (Nocedal & Wright, Algorithm 7.2 inside Algorithm 4.1).

    The radius never falls below ``min_radius``: a step refused at that radius
    is reported as ``Reason.STALLED`` (the model cannot be trusted at any scale
    the control allows), instead of shrinking the radius until it underflows.

    Args:
        initial_radius: ``Δ₀ > 0``.
        max_radius: ``Δ̂ >= Δ₀``.
        min_radius: ``Δ_min`` in ``[0, Δ₀]``.
        eta: acceptance threshold ``η ∈ [0, 1/4)``.
        metric: ``"euclidean"`` (``‖s‖₂``) or ``"operator"`` (``‖s‖_A``; with the
            Fisher, ``½‖s‖²_A`` is the quadratic KL: an adaptive KL radius).
        gtol: first-order tolerance on ``‖∇loss‖`` (see :class:`RadiusControl`).
        probe_iterations: Lanczos products of the second-order check.
    """

    state_type = TrustRadiusState

    def __init__(
        self,
        initial_radius: float = 1.0,
        max_radius: float = 1000.0,
        eta: float = 0.15,
        *,
        min_radius: float = 1e-12,
        metric: str = "euclidean",
        gtol: float = 1e-5,
        probe_iterations: int = 10,
    ) -> None:
        super().__init__(metric=metric, gtol=gtol, probe_iterations=probe_iterations)
        self.initial_radius = check_positive("initial_radius", initial_radius)
        self.max_radius = check_positive("max_radius", max_radius)
        if max_radius < initial_radius:
            raise ValueError(f"max_radius ({max_radius}) must be >= initial_radius ({initial_radius})")
        self.min_radius = check_interval("min_radius", min_radius, 0.0, self.initial_radius, "e.g. 1e-12")
        self.eta = check_interval("eta", eta, 0.0, 0.25, "Nocedal & Wright Algorithm 4.1", closed="left")

    def init(self) -> TrustRadiusState:
        return TrustRadiusState(self.initial_radius)

    def region(self, state: TrustRadiusState) -> Ball:
        return Ball(state.radius, self.metric)

    def stalled(self, state: TrustRadiusState) -> bool:
        return state.radius <= self.min_radius

    def accept(self, ratio: float) -> bool:
        return ratio > self.eta

    def update(self, state: TrustRadiusState, ratio: float, step_norm: float) -> TrustRadiusState:
        radius = state.radius
        if ratio < 0.25:
            radius = max(0.25 * radius, self.min_radius)
        elif ratio > 0.75 and step_norm >= _ON_BOUNDARY * radius:
            radius = min(2.0 * radius, self.max_radius)
        return TrustRadiusState(radius)

    def __repr__(self) -> str:
        return (
            f"TrustRadius(initial_radius={self.initial_radius}, max_radius={self.max_radius}, eta={self.eta}, "
            f"min_radius={self.min_radius}, "
            f"metric={self.metric!r}, gtol={self.gtol})"
        )
