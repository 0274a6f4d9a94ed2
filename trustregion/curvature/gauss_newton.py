"""Gauss-Newton / analytic Fisher ``A = Jᵀ M J`` with a cached linearisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from trustregion._vectors import flatten, split_like
from trustregion.curvature.base import Curvature, LinearOperator, StepProblem
from trustregion.curvature.layerwise import Input, LayerwiseLinearisation, trace
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

    :meth:`build` runs the forward pass once and keeps what the products need;
    no product recomputes the forward pass. Two paths give the same operator:

    * **layer-wise** (:meth:`for_module` on a network of linear layers and
      ``tanh`` / ``relu``, the usual policy): ``J v`` and ``Jᵀ w`` are written out
      per layer with stored activations and slopes, each layer's ``J v`` one fused
      matrix product (:mod:`trustregion.curvature.layerwise`);
    * **autograd graphs** (any other model): the graph of ``z``, through which one
      backward gives ``u -> Jᵀu``, and the graph of that linear map itself, from one
      backward with ``create_graph=True`` at ``u = 0``, through which one backward
      gives its transpose ``v -> J v = ∂(vᵀJᵀu)/∂u``. Like :class:`KLHessian`, this
      needs the model's operations to be twice differentiable.

    Cost per product in gradients of the TRPO surrogate, on a 64-64 tanh MLP
    policy, one thread, CPU time (``benchmarks/curvature.py``, docs/benchmarks.md):
    layer-wise 0.86 to 0.91 at batch 2,048 and 1.12 to 1.13 at 20,000; autograd
    graphs 1.12 to 1.24; the double backward of the mean KL (:class:`KLHessian`)
    1.9 to 2.4. ``torch.func`` alternatives were measured and not chosen:
    vjp-of-vjp (the same graphs) 1.2 to 1.3, ``linearize`` 1.3 to 1.4 plus 7 to 39
    gradients per build (it traces the model every step). An exact product needs
    about 4/3 of a gradient's matrix work (two products per layer in each of
    ``J v`` and ``Jᵀ w`` against three for a gradient), which is why no path goes
    much below 1.0. Memory: the layer-wise path keeps a ``[ẋ, x]`` buffer per layer,
    25 % more than the autograd graphs at batch 20,000 (65 against 52 MiB).

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
        *,
        layerwise: bool = True,
    ) -> GaussNewton:
        """Gauss-Newton of ``module(*inputs())`` in the module's own parameters.

        ``inputs`` is called at every :meth:`build`, so it can return the current
        batch (or a subsample of it). The optimizer must hold exactly
        ``module.parameters()``, in that order.

        With ``layerwise=True`` (the default), a module made only of linear layers
        (``nn.Linear`` or ``F.linear`` on its parameters), ``tanh`` / ``relu``
        activations and parameters returned as outputs gets its products written
        out layer by layer (:mod:`trustregion.curvature.layerwise`): the same
        ``Jᵀ M J v``, cheaper than the autograd graphs. Any other module uses the
        autograd path; ``layerwise=False`` forces it.
        """
        names = [name for name, _ in module.named_parameters()]

        def module_outputs(*params: Tensor) -> object:
            args = inputs()
            args = args if isinstance(args, tuple) else (args,)
            return torch.func.functional_call(module, dict(zip(names, params, strict=True)), args)

        operator = cls(module_outputs, fisher)
        operator._module_params = list(module.parameters())
        if layerwise:
            operator._layerwise = (trace(module, names), inputs)
        return operator

    def build(self, problem: StepProblem) -> LinearOperator:
        params = list(problem.params)
        self._check_params(params)
        linearisation = self._layerwise_linearisation(params)
        if linearisation is None:
            leaves = [p.detach().requires_grad_() for p in params]
            with torch.enable_grad():
                linearisation = _Linearisation(self.outputs(*leaves), leaves)
        output_fisher = self.fisher.bind(tree_map(torch.detach, linearisation.outputs))

        def gauss_newton_product(vector: Tensor) -> Tensor:
            tangent = linearisation.jacobian_product(split_like(vector, params))
            return linearisation.transpose_product(output_fisher(tangent))

        dim = sum(p.numel() for p in params)
        return LinearOperator(gauss_newton_product, dim, positive_semidefinite=True)

    def _layerwise_linearisation(self, params: list[Tensor]) -> LayerwiseLinearisation | None:
        traced, inputs = getattr(self, "_layerwise", (None, None))
        if traced is None:
            return None
        args = inputs()
        args = args if isinstance(args, tuple) else (args,)
        steps, output = traced
        if sum(isinstance(step, Input) for step in steps) != len(args):
            return None
        return LayerwiseLinearisation(steps, output, params, args)

    def _check_params(self, params: Sequence[Tensor]) -> None:
        expected = getattr(self, "_module_params", None)
        if expected is None:
            return
        if len(expected) != len(params) or any(a is not b for a, b in zip(expected, params, strict=True)):
            raise ValueError(
                "GaussNewton.for_module(module, ...) needs the optimizer to hold exactly "
                "module.parameters() in order; build the optimizer from the same module"
            )


class _Linearisation:
    """The cached graphs of ``z = f(θ_old)`` and of the linear map ``u -> Jᵀu``.

    ``Jᵀu`` comes from one backward through the graph of ``z``; ``J v`` from one
    backward through the graph of ``u -> Jᵀu``, built once with
    ``create_graph=True`` at a zero ``u`` (the map is linear, so where it is
    built does not matter): ``J v = ∂(vᵀ Jᵀu)/∂u``.
    """

    def __init__(self, outputs: object, leaves: list[Tensor]) -> None:
        self.outputs = outputs
        flat_outputs, self._structure = tree_flatten(outputs)
        if not flat_outputs or not all(isinstance(z, Tensor) for z in flat_outputs):
            raise TypeError("outputs(*params) must return a tensor or a tuple of tensors (the distribution parameters)")
        self._leaves = leaves
        self._zeros = [None if z.requires_grad else torch.zeros_like(z) for z in flat_outputs]
        self._outputs = [z for z in flat_outputs if z.requires_grad]  # the outputs that depend on θ
        self._cotangents = [torch.zeros_like(z, requires_grad=True) for z in self._outputs]
        transposed = (
            torch.autograd.grad(self._outputs, leaves, self._cotangents, create_graph=True, allow_unused=True)
            if self._outputs
            else [None] * len(leaves)
        )
        self._linked = [i for i, row in enumerate(transposed) if row is not None and row.requires_grad]
        self._transposed = [transposed[i] for i in self._linked]

    def jacobian_product(self, vector_parts: list[Tensor]) -> object:
        """``J v`` in the structure of the outputs; ``vector_parts`` shaped like the parameters."""
        products: list[Tensor | None] = [None] * len(self._outputs)
        if self._transposed:
            products = torch.autograd.grad(
                self._transposed,
                self._cotangents,
                [vector_parts[i] for i in self._linked],
                retain_graph=True,
                allow_unused=True,
            )
        live = iter(zip(products, self._cotangents, strict=True))
        tangents = []
        for zero in self._zeros:
            if zero is not None:
                tangents.append(zero)
                continue
            product, cotangent = next(live)
            tangents.append(torch.zeros_like(cotangent, requires_grad=False) if product is None else product)
        return tree_unflatten(tangents, self._structure)

    def transpose_product(self, cotangent: object) -> Tensor:
        """``Jᵀw`` as one flat vector, for ``w`` in the structure of the outputs."""
        flat_cotangent, _ = tree_flatten(cotangent)
        live = [w for w, zero in zip(flat_cotangent, self._zeros, strict=True) if zero is None]
        if not self._outputs:
            return flatten([torch.zeros_like(p) for p in self._leaves])
        rows = torch.autograd.grad(self._outputs, self._leaves, live, retain_graph=True, allow_unused=True)
        return flatten([torch.zeros_like(p) if row is None else row for row, p in zip(rows, self._leaves, strict=True)])
