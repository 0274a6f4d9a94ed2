"""Exact Hessian-vector products of the loss (for non-RL problems)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from trustregion._vectors import flat_gradient, flatten, gradients, split_like
from trustregion.curvature.base import Curvature, StepProblem
from trustregion.operator import LinearOperator


class Hessian(Curvature):
    """``A = ∇² loss(θ_old)``, the exact Hessian of the loss; symmetric, maybe indefinite.

    Two ways to form ``H v``:

    * ``function`` given (a pure function of the parameter tensors returning the
      loss): forward-over-reverse, ``H v = jvp(∇ loss, v)`` with
      :func:`torch.func.jvp` of :func:`torch.func.grad`; the product costs about
      one gradient and keeps no graph between steps. If an operation in the model
      has no forward-mode derivative, the operator falls back to double backward.
    * no ``function``: double backward through the closure's graph
      (``∇ loss`` taken once with ``create_graph=True``; each product is one more
      backward), which works for any closure.

    With an indefinite ``A`` use a solver that handles negative curvature
    (``ConjugateGradient`` stops there and reports it).
    """

    def __init__(self, function: Callable[..., Tensor] | None = None) -> None:
        if function is not None and not callable(function):
            raise TypeError("function must be callable: function(*params) -> scalar loss tensor")
        self.function = function
        self.needs_loss_graph = function is None

    def build(self, problem: StepProblem) -> LinearOperator:
        params = list(problem.params)
        dim = sum(p.numel() for p in params)
        if self.function is None:
            return LinearOperator(_double_backward(problem), dim, positive_semidefinite=False)
        return LinearOperator(_forward_over_reverse(self.function, params), dim, positive_semidefinite=False)


def _double_backward(problem: StepProblem) -> Callable[[Tensor], Tensor]:
    params = problem.params
    gradient = flatten(problem.loss_gradient)

    def hessian_vector_product(vector: Tensor) -> Tensor:
        if not gradient.requires_grad:  # the loss is linear in θ
            return torch.zeros_like(vector)
        with torch.enable_grad():
            return flat_gradient(gradient @ vector, params, retain_graph=True).detach()

    return hessian_vector_product


def _forward_over_reverse(function: Callable[..., Tensor], params: list[Tensor]) -> Callable[[Tensor], Tensor]:
    primals = tuple(p.detach() for p in params)
    gradient_fn = torch.func.grad(function, argnums=tuple(range(len(primals))))
    fallback: list[Callable[[Tensor], Tensor]] = []

    def reverse_over_reverse(vector: Tensor) -> Tensor:
        with torch.enable_grad():
            leaves = [p.requires_grad_() for p in (q.clone() for q in primals)]
            grads = gradients(function(*leaves), leaves, create_graph=True)
            return flat_gradient(flatten(grads) @ vector, leaves).detach()

    def hessian_vector_product(vector: Tensor) -> Tensor:
        if fallback:
            return fallback[0](vector)
        try:
            _, tangent_out = torch.func.jvp(gradient_fn, primals, tuple(split_like(vector, primals)))
        except (NotImplementedError, RuntimeError):
            fallback.append(reverse_over_reverse)
            return reverse_over_reverse(vector)
        return flatten(tangent_out).detach()

    return hessian_vector_product
