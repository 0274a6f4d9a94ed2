"""Tikhonov damping ``A + λ I`` as a wrapper around any curvature."""

from __future__ import annotations

import math

from trustregion.curvature.base import Curvature, LinearOperator, StepProblem


class Damped(Curvature):
    """``A_λ = A + λ I``: keeps CG well posed when ``A`` is singular or noisy.

    The default ``λ = 0.1`` is the ``cg_damping`` of OpenAI baselines TRPO and
    sb3-contrib TRPO (``damping_coeff`` in Spinning Up). With damping the step
    solves ``max gᵀs s.t. ½ sᵀ(A + λI)s <= δ``.

    Args:
        curvature: the operator to damp.
        damping: ``λ >= 0``.
    """

    def __init__(self, curvature: Curvature, damping: float = 0.1) -> None:
        if not isinstance(curvature, Curvature):
            raise TypeError(f"curvature must be a Curvature (e.g. KLHessian()); got {type(curvature).__name__}")
        if not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping >= 0):
            raise ValueError(f"damping must be a finite number >= 0 (got {damping!r}); 0.1 is the TRPO default")
        self.curvature = curvature
        self.damping = float(damping)
        self.needs_loss_graph = curvature.needs_loss_graph

    def build(self, problem: StepProblem) -> LinearOperator:
        return self.curvature.build(problem).shifted(self.damping)

    def __repr__(self) -> str:
        return f"Damped({self.curvature!r}, damping={self.damping})"
