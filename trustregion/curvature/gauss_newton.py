"""Gauss-Newton / analytic Fisher ``A = Jᵀ M J`` with a cached linearisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from trustregion._vectors import flatten, split_like
from trustregion.curvature.base import Curvature, LinearOperator, StepProblem
from trustregion.distributions import OutputFisher

OutputFunction = Callable[..., object]


class GaussNewton(Curvature):
    """``A = Jᵀ M J``: the Fisher of the mean KL without differentiating the KL.

    ``J = ∂z/∂θ`` is the Jacobian of the model outputs ``z = f(θ)`` (the
    distribution parameters for every input of the batch) and ``M`` the Fisher
    of the output distribution (:mod:`trustregion.distributions`). For a KL
    between distributions of the same family this equals the KL Hessian at
    ``θ_old`` (Martens, "New insights and perspectives on the natural gradient
    method", 2020, sec. 9), and it is PSD by construction.

    :meth:`build` runs the forward pass once with :func:`torch.func.vjp`, which
    keeps the graph of ``z`` and returns ``u -> Jᵀu``; a second ``vjp`` of that
    linear map gives its transpose ``v -> J v``. A product is then
    ``Jᵀ (M (J v))``: two passes through cached graphs and no forward
    recomputation. (:func:`torch.func.linearize` would give ``J v`` too, but
    traces the model, which costs tens of gradients per step.)

    Args:
        outputs: ``outputs(*params) -> z``, a pure function of the optimized
            tensors (in the optimizer's order) returning a tensor or a tuple of
            tensors whose first dimension is the batch. See :meth:`for_module`.
        fisher: the output Fisher ``M``.
    """

    def __init__(self, outputs: OutputFunction, fisher: OutputFisher) -> None:
        if not callable(outputs):
            raise TypeError("outputs must be callable: outputs(*params) -> distribution parameters")
        if not isinstance(fisher, OutputFisher):
            raise TypeError(f"fisher must be an OutputFisher (e.g. CategoricalFisher()); got {type(fisher).__name__}")
        self.outputs = outputs
        self.fisher = fisher

    @classmethod
    def for_module(
        cls,
        module: nn.Module,
        inputs: Callable[[], object],
        fisher: OutputFisher,
    ) -> GaussNewton:
        """Gauss-Newton of ``module(*inputs())`` in the module's own parameters.

        ``inputs`` is called at every :meth:`build`, so it can return the current
        batch (or a subsample of it). The optimizer must hold exactly
        ``module.parameters()``, in that order.
        """
        names = [name for name, _ in module.named_parameters()]

        def module_outputs(*params: Tensor) -> object:
            args = inputs()
            args = args if isinstance(args, tuple) else (args,)
            return torch.func.functional_call(module, dict(zip(names, params, strict=True)), args)

        operator = cls(module_outputs, fisher)
        operator._module_params = list(module.parameters())
        return operator

    def build(self, problem: StepProblem) -> LinearOperator:
        params = list(problem.params)
        self._check_params(params)
        primals = tuple(p.detach() for p in params)
        with torch.enable_grad():
            outputs, transpose_jacobian = torch.func.vjp(self.outputs, *primals)
            zeros = tree_map(torch.zeros_like, outputs)
            _, jacobian_product = torch.func.vjp(transpose_jacobian, zeros)
        output_fisher = self.fisher.bind(tree_map(torch.detach, outputs))

        def gauss_newton_product(vector: Tensor) -> Tensor:
            (jv,) = jacobian_product(tuple(split_like(vector, primals)))
            return flatten(transpose_jacobian(output_fisher(jv))).detach()

        dim = sum(p.numel() for p in params)
        return LinearOperator(gauss_newton_product, dim, positive_semidefinite=True)

    def _check_params(self, params: Sequence[Tensor]) -> None:
        expected = getattr(self, "_module_params", None)
        if expected is None:
            return
        if len(expected) != len(params) or any(a is not b for a, b in zip(expected, params, strict=True)):
            raise ValueError(
                "GaussNewton.for_module(module, ...) needs the optimizer to hold exactly "
                "module.parameters() in order; build the optimizer from the same module"
            )
