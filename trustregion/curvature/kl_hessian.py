"""Hessian of the constraint by double backward: the generic Fisher product."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from trustregion._validation import check_callable
from trustregion._vectors import flat_gradient
from trustregion.curvature.base import Curvature, StepProblem
from trustregion.operator import LinearOperator


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

    Args:
        constraint: ``() -> D̄_KL``, the KL whose Hessian is wanted, evaluated once
            per :meth:`build` with gradients enabled (e.g. the mean KL on a
            subsample of the batch, which makes each product cheaper). ``None``
            (the default) differentiates the closure's own constraint.
    """

    def __init__(self, constraint: Callable[[], Tensor] | None = None) -> None:
        if constraint is not None:
            check_callable("constraint", constraint, "() -> mean KL as a scalar tensor")
        self.constraint = constraint

    def build(self, problem: StepProblem) -> LinearOperator:
        constraint = self._constraint(problem)
        params = problem.params
        with torch.enable_grad():
            kl_gradient = flat_gradient(constraint, params, retain_graph=True, create_graph=True)
        dim = kl_gradient.numel()

        def fisher_vector_product(vector: Tensor) -> Tensor:
            if not kl_gradient.requires_grad:  # constraint is locally flat
                return torch.zeros_like(vector)
            with torch.enable_grad():
                return flat_gradient(kl_gradient @ vector, params, retain_graph=True).detach()

        return LinearOperator(fisher_vector_product, dim, positive_semidefinite=True)

    def _constraint(self, problem: StepProblem) -> Tensor:
        if self.constraint is not None:
            with torch.enable_grad():
                constraint = self.constraint()
            where = "KLHessian's constraint function"
        else:
            constraint = problem.constraint
            where = "the closure's constraint"
            if constraint is None:
                raise ValueError(
                    "KLHessian needs a constraint: make the closure return (loss, mean_kl), "
                    "or pass curvature=Hessian() for a loss-only closure"
                )
        if not isinstance(constraint, Tensor) or constraint.numel() != 1 or not constraint.requires_grad:
            raise ValueError(
                f"KLHessian needs {where} as a scalar tensor with its autograd graph: compute the mean KL "
                "from the parameters without torch.no_grad() or .detach()"
            )
        return constraint

    def __repr__(self) -> str:
        return "KLHessian()" if self.constraint is None else "KLHessian(constraint=<function>)"
