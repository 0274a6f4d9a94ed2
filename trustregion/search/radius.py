"""Radius controllers: classic trust-region and Levenberg-Marquardt step control for loss-only closures."""

from __future__ import annotations

import math
from collections.abc import Mapping

from trustregion.search.base import RadiusController

_ON_BOUNDARY = 1.0 - 1e-5
"""A step counts as on the boundary when ``‖s‖ >= (1 - 1e-5) Δ`` (rounding of the norm)."""


class TrustRadius(RadiusController):
    r"""The trust-region radius rule of Nocedal & Wright, *Numerical Optimization*, 2nd ed. (2006), Algorithm 4.1.

    With ``ρ`` the ratio of actual to predicted reduction of the step ``s``:

    * ``ρ < 1/4``: shrink, ``Δ ← Δ / 4``;
    * ``ρ > 3/4`` and ``‖s‖ = Δ`` (the model was trusted up to the boundary):
      expand, ``Δ ← min(2Δ, Δ̂)``;
    * otherwise keep ``Δ``;

    and take the step when ``ρ > η``. The constants ``1/4, 3/4, 1/4, 2`` are
    those of Algorithm 4.1, which asks for ``η ∈ [0, 1/4)``; the defaults
    ``Δ₀ = 1``, ``Δ̂ = 1000`` and ``η = 0.15`` are those of
    :func:`scipy.optimize.minimize` (``trust-ncg``), so the two iterate alike.

    With ``curvature=Hessian()`` and the :class:`~trustregion.SteihaugCG` solver
    (the optimizer's default under a radius controller), a
    :class:`~trustregion.TrustRegionOptimizer` is trust-region Newton-CG
    (Nocedal & Wright, Algorithm 7.2 inside Algorithm 4.1)::

        opt = TrustRegionOptimizer(model.parameters(), curvature=Hessian(), line_search=TrustRadius())
        for _ in range(200):
            opt.step(lambda: loss_fn(model))              # loss-only closure
            if opt.last_result.reason is Reason.CONVERGED:
                break

    The radius lives in ``opt.state`` (key ``"trust_radius"``) and survives
    ``state_dict()`` / ``load_state_dict()``.

    Args:
        initial_radius: ``Δ₀ > 0``.
        max_radius: ``Δ̂ >= Δ₀``.
        eta: acceptance threshold ``η ∈ [0, 1/4)``.
        metric: ``"euclidean"`` (``‖s‖₂``) or ``"operator"`` (``‖s‖_A``; with the
            Fisher, ``½‖s‖²_A`` is the quadratic KL: an adaptive KL radius).
        gtol: first-order tolerance on ``‖∇loss‖`` (see :class:`RadiusController`).
        probe_iterations: Lanczos products of the second-order check.
    """

    def __init__(
        self,
        initial_radius: float = 1.0,
        max_radius: float = 1000.0,
        eta: float = 0.15,
        *,
        metric: str = "euclidean",
        gtol: float = 1e-5,
        probe_iterations: int = 10,
    ) -> None:
        super().__init__(metric=metric, gtol=gtol, probe_iterations=probe_iterations)
        _check_positive("initial_radius", initial_radius)
        _check_positive("max_radius", max_radius)
        if max_radius < initial_radius:
            raise ValueError(f"max_radius ({max_radius}) must be >= initial_radius ({initial_radius})")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta < 0.25:
            raise ValueError(f"eta must be in [0, 0.25) (got {eta!r}); Nocedal & Wright Algorithm 4.1")
        self.initial_radius = float(initial_radius)
        self.max_radius = float(max_radius)
        self.eta = float(eta)

    def initial_state(self) -> dict[str, float]:
        return {"trust_radius": self.initial_radius}

    def accept(self, ratio: float) -> bool:
        return ratio > self.eta

    def update(self, state: Mapping[str, float], ratio: float, step_norm: float) -> dict[str, float]:
        radius = state["trust_radius"]
        if ratio < 0.25:
            radius = 0.25 * radius
        elif ratio > 0.75 and step_norm >= _ON_BOUNDARY * radius:
            radius = min(2.0 * radius, self.max_radius)
        return {"trust_radius": radius}

    def __repr__(self) -> str:
        return (
            f"TrustRadius(initial_radius={self.initial_radius}, max_radius={self.max_radius}, eta={self.eta}, "
            f"metric={self.metric!r}, gtol={self.gtol})"
        )


class LevenbergMarquardt(RadiusController):
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
    consecutive failures. ``μ`` is kept in ``[min_damping, max_damping]``;
    ``μ`` and ``ν`` are stored in ``opt.state`` (keys ``"damping"`` and
    ``"damping_growth"``) and saved by ``state_dict()``. ``μ`` is absolute: an
    ``initial_damping`` small compared with the curvature's scale (``‖JᵀJ‖``)
    starts near Gauss-Newton.

    Args:
        initial_damping: ``μ₀ > 0``.
        eta: acceptance threshold ``η ∈ [0, 1/4)`` (default ``0``: any decrease).
        min_damping: lower bound of ``μ``.
        max_damping: upper bound of ``μ``.
        gtol: first-order tolerance on ``‖∇loss‖`` (see :class:`RadiusController`).
    """

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
        for name, value in (("initial_damping", initial_damping), ("min_damping", min_damping)):
            _check_positive(name, value)
        _check_positive("max_damping", max_damping)
        if not min_damping <= initial_damping <= max_damping:
            raise ValueError(
                f"initial_damping ({initial_damping}) must lie in [min_damping, max_damping] "
                f"= [{min_damping}, {max_damping}]"
            )
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta < 0.25:
            raise ValueError(f"eta must be in [0, 0.25) (got {eta!r})")
        self.initial_damping = float(initial_damping)
        self.eta = float(eta)
        self.min_damping = float(min_damping)
        self.max_damping = float(max_damping)

    def initial_state(self) -> dict[str, float]:
        return {"damping": self.initial_damping, "damping_growth": 2.0}

    def accept(self, ratio: float) -> bool:
        return ratio > self.eta

    def update(self, state: Mapping[str, float], ratio: float, step_norm: float) -> dict[str, float]:
        damping, growth = state["damping"], state["damping_growth"]
        if self.accept(ratio):
            damping, growth = damping * max(1.0 / 3.0, 1.0 - (2.0 * ratio - 1.0) ** 3), 2.0
        else:
            damping, growth = damping * growth, 2.0 * growth
        damping = min(max(damping, self.min_damping), self.max_damping)
        return {"damping": damping, "damping_growth": min(growth, 2.0**30)}

    def __repr__(self) -> str:
        return f"LevenbergMarquardt(initial_damping={self.initial_damping}, eta={self.eta}, gtol={self.gtol})"


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0 (got {value!r})")
