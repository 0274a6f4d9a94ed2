"""Hessian of the constraint by double backward: the generic Fisher product."""

from __future__ import annotations

import torch
from torch import Tensor

from trustregion._vectors import flat_gradient
from trustregion.curvature.base import Curvature, LinearOperator, StepProblem


class KLHessian(Curvature):
    """``A = ∇²_θ D̄_KL(θ_old, θ)`` at ``θ = θ_old``, by double backward.

    At the old parameters the mean KL and its gradient vanish and its Hessian is
    the Fisher information matrix ``F`` (docs/math.md, "Quadratic model of the
    KL"). :meth:`build` takes ``∇ D̄_KL`` once with ``create_graph=True``; each
    product is then ``F v = ∇_θ (∇ D̄_KLᵀ v)``, one extra backward through the
    retained graph. This is the operator of the TRPO reference implementations
    (Schulman et al., 2015; OpenAI baselines ``fisher_vector_product``) and works
    for any twice-differentiable constraint. ``A`` is symmetric, and PSD when the
    constraint is a divergence minimised at ``θ_old``.
    """

    def build(self, problem: StepProblem) -> LinearOperator:
        if problem.constraint is None:
            raise ValueError(
                "KLHessian needs a constraint: make the closure return (loss, mean_kl), "
                "or pass curvature=Hessian() for a loss-only closure"
            )
        if not problem.constraint.requires_grad:
            raise ValueError(
                "KLHessian needs the constraint's autograd graph: compute mean_kl from the parameters "
                "without torch.no_grad() or .detach()"
            )
        params = problem.params
        kl_gradient = flat_gradient(problem.constraint, params, retain_graph=True, create_graph=True)
        dim = kl_gradient.numel()

        def fisher_vector_product(vector: Tensor) -> Tensor:
            if not kl_gradient.requires_grad:  # constraint is locally flat
                return torch.zeros_like(vector)
            with torch.enable_grad():
                return flat_gradient(kl_gradient @ vector, params, retain_graph=True).detach()

        return LinearOperator(fisher_vector_product, dim, positive_semidefinite=True)
