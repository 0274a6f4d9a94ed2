"""Gauss-Newton / analytic Fisher ``A = Jᵀ M J`` with a cached linearisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from trustregion._validation import check_callable, check_instance
from trustregion._vectors import flatten, split_like
from trustregion.curvature.base import Curvature, StepProblem
from trustregion.curvature.layerwise import ColumnStatistics, Input, LayerwiseLinearisation, trace
from trustregion.operator import LinearOperator
from trustregion.outputs import OutputFisher

OutputFunction = Callable[..., object]


class GaussNewton(Curvature):
    """``A = Jᵀ M J``: the Fisher of the mean KL without differentiating the KL.

    ``J = ∂z/∂θ`` is the Jacobian of the model outputs ``z = f(θ)`` (the
    distribution parameters for every input of the batch) and ``M`` the Fisher
    of the output distribution (:mod:`trustregion.outputs`). For a KL
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

    The layer-wise path costs less than a gradient of the TRPO surrogate per
    product, the autograd path slightly more, and both well under the double
    backward of :class:`KLHessian`; docs/benchmarks.md has the measurements
    (``benchmarks/curvature.py``).

    Args:
        outputs: ``outputs(*params) -> z``, a pure function of the optimized
            tensors (in the optimizer's order) returning a tensor or a tuple of
            tensors whose first dimension is the batch. It is called with the
            parameters themselves, so a function that ignores its arguments and
            reads them directly (through the module that holds them) gives the
            same operator. See :meth:`for_module`.
        fisher: the output Fisher ``M``.
    """

    def __init__(self, outputs: OutputFunction, fisher: OutputFisher) -> None:
        self.outputs = check_callable("outputs", outputs, "outputs(*params) -> distribution parameters")
        self.fisher = check_instance("fisher", fisher, OutputFisher, "CategoricalFisher()")
        self._module_params: list[Tensor] | None = None
        self._traced: object | None = None

    @classmethod
    def for_module(
        cls,
        module: nn.Module,
        inputs: Tensor | tuple[Tensor, ...],
        fisher: OutputFisher,
        *,
        layerwise: bool = True,
    ) -> GaussNewton:
        """Gauss-Newton of ``module(*inputs)`` in the module's own parameters.

        ``inputs`` is the batch (a tensor, or a tuple of the forward's arguments);
        :meth:`with_inputs` gives the same operator on another batch without
        reading the module again. The optimizer must hold exactly
        ``module.parameters()``, in that order.

        With ``layerwise=True`` (the default), a module made only of linear layers
        (``nn.Linear`` or ``F.linear`` on its parameters), ``tanh`` / ``relu``
        activations and parameters returned as outputs gets its products written
        out layer by layer (:mod:`trustregion.curvature.layerwise`): the same
        ``Jᵀ M J v``, cheaper than the autograd graphs. Any other module uses the
        autograd path; ``layerwise=False`` forces it.
        """
        check_instance("module", module, nn.Module, "the policy network")
        names = [name for name, _ in module.named_parameters()]
        operator = cls(_ModuleOutputs(module, names, _as_inputs(inputs)), fisher)
        operator._module_params = list(module.parameters())
        operator._traced = trace(module, names) if layerwise else None
        return operator

    @property
    def layerwise(self) -> bool:
        """Whether products go layer by layer (:meth:`for_module` traced the module), as K-FAC needs."""
        return self._traced is not None

    def __getstate__(self) -> dict[str, object]:
        """Copied and pickled without the trace (its torch.fx graph does not pickle); the copy traces its module."""
        state = dict(self.__dict__)
        state["_traced"] = None
        state["_trace_again"] = self._traced is not None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        trace_again = state.pop("_trace_again", False)
        self.__dict__.update(state)
        if trace_again:
            self._traced = trace(self.outputs.module, self.outputs.names)

    def with_inputs(self, inputs: Tensor | tuple[Tensor, ...], fisher: OutputFisher | None = None) -> GaussNewton:
        """The same operator on another batch (a :meth:`for_module` operator only; the trace is reused).

        ``fisher`` replaces the output Fisher for that batch, e.g. ``CategoricalFisher(mask)`` with the
        batch's action masks; ``None`` keeps this operator's.
        """
        if not isinstance(self.outputs, _ModuleOutputs):
            raise TypeError("with_inputs needs an operator from GaussNewton.for_module(module, inputs, fisher)")
        fisher = self.fisher if fisher is None else fisher
        check_instance("fisher", fisher, OutputFisher, "CategoricalFisher(mask)")
        operator = object.__new__(GaussNewton)  # not copy.copy, which would trace again
        operator.__dict__.update(self.__dict__, outputs=self.outputs.on(_as_inputs(inputs)), fisher=fisher)
        return operator

    def build(self, problem: StepProblem) -> LinearOperator:
        params = list(problem.params)
        return self.operator(self.linearise(params), params)

    def linearise(self, params: list[Tensor]) -> LayerwiseLinearisation | _Linearisation:
        """The outputs at ``params`` and what ``J v`` and ``Jᵀw`` need (``jacobian_product``, ``transpose_product``)."""
        self._check_params(params)
        linearisation = self._layerwise_linearisation(params)
        if linearisation is None:
            leaves = [p if p.requires_grad and p.is_leaf else p.detach().requires_grad_() for p in params]
            with torch.enable_grad():  # the parameters themselves: a function that reads them directly also works
                linearisation = _Linearisation(self.outputs(*leaves), leaves)
        return linearisation

    def operator(self, linearisation: LayerwiseLinearisation | _Linearisation, params: list[Tensor]) -> LinearOperator:
        """``v -> Jᵀ M J v`` through ``linearisation`` (from :meth:`linearise` at ``params``)."""
        output_fisher = self.fisher.bind(tree_map(torch.detach, linearisation.outputs))

        def gauss_newton_product(vector: Tensor) -> Tensor:
            tangent = linearisation.jacobian_product(split_like(vector, params))
            return linearisation.transpose_product(output_fisher(tangent))

        dim = sum(p.numel() for p in params)
        statistics = _statistics_once(linearisation, self.fisher)
        return LinearOperator(
            gauss_newton_product,
            dim,
            positive_semidefinite=True,
            exact_diagonal=lambda: _then(statistics(), ColumnStatistics.diagonal),
            kronecker_factors=lambda: _then(statistics(), ColumnStatistics.kronecker_factors),
        )

    def _layerwise_linearisation(self, params: list[Tensor]) -> LayerwiseLinearisation | None:
        if self._traced is None:
            return None
        steps, output = self._traced
        inputs = self.outputs.inputs
        if sum(isinstance(step, Input) for step in steps) != len(inputs):
            return None
        return LayerwiseLinearisation(steps, output, params, inputs)

    def _check_params(self, params: Sequence[Tensor]) -> None:
        expected = self._module_params
        if expected is None:
            return
        if len(expected) != len(params) or any(a is not b for a, b in zip(expected, params, strict=True)):
            raise ValueError(
                "GaussNewton.for_module(module, ...) needs the optimizer to hold exactly "
                "module.parameters() in order; build the optimizer from the same module"
            )

    def __repr__(self) -> str:
        return f"GaussNewton({self.fisher!r})"


def _statistics_once(linearisation: object, fisher: OutputFisher) -> Callable[[], ColumnStatistics | None]:
    """The column statistics of a layer-wise linearisation, computed on first use; ``None`` on the autograd path."""
    cache: list[ColumnStatistics | None] = []

    def statistics() -> ColumnStatistics | None:
        if not cache:
            cache.append(_column_statistics(linearisation, fisher))
        return cache[0]

    return statistics


def _column_statistics(linearisation: object, fisher: OutputFisher) -> ColumnStatistics | None:
    if not isinstance(linearisation, LayerwiseLinearisation):
        return None
    try:
        columns = fisher.square_root(linearisation.outputs)
    except NotImplementedError:
        return None
    return linearisation.column_statistics(columns)


def _then(value: object, method: Callable) -> object:
    return None if value is None else method(value)


class _ModuleOutputs:
    """``outputs(*params) = module(*inputs)`` evaluated with ``params`` in place of the module's own."""

    def __init__(self, module: nn.Module, names: list[str], inputs: tuple[Tensor, ...]) -> None:
        self.module, self.names, self.inputs = module, names, inputs

    def on(self, inputs: tuple[Tensor, ...]) -> _ModuleOutputs:
        return _ModuleOutputs(self.module, self.names, inputs)

    def __call__(self, *params: Tensor) -> object:
        return torch.func.functional_call(self.module, dict(zip(self.names, params, strict=True)), self.inputs)


def _as_inputs(inputs: object) -> tuple[Tensor, ...]:
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError(
            "inputs must be the batch: a tensor, or a tuple of the module's forward arguments "
            f"(got {tuple(type(t).__name__ for t in inputs)}); for a new batch use with_inputs(batch)"
        )
    return inputs


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
        if self._outputs and not self._linked:
            raise ValueError(
                "outputs(*params) (residuals(*params)) does not depend on the optimized parameters: compute it from "
                "the tensors it is given, or from the module whose parameters the optimizer holds"
            )
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
