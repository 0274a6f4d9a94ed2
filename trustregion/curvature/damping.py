"""Tikhonov damping ``A + λ I`` as a wrapper around any curvature."""

from __future__ import annotations

from trustregion._validation import check_instance, check_nonnegative
from trustregion.curvature.base import Curvature, StepProblem
from trustregion.operator import LinearOperator


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
        self.curvature = check_instance("curvature", curvature, Curvature, "KLHessian()")
        self.damping = check_nonnegative("damping", damping, "0.1 is the TRPO default")
        self.needs_loss_graph = curvature.needs_loss_graph

    def build(self, problem: StepProblem) -> LinearOperator:
        return self.curvature.build(problem).shifted(self.damping)

    def __repr__(self) -> str:
        return f"Damped({self.curvature!r}, damping={self.damping})"
