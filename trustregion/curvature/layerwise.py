"""A layer-by-layer ``J v`` and ``Jᵀ w`` for networks of linear layers and element-wise activations.

:class:`~trustregion.GaussNewton` forms its products through autograd graphs by default. For the
networks most policies are made of (``nn.Linear`` / ``F.linear`` layers, ``tanh`` or ``relu``
between them, parameters returned as outputs, such as a state-independent log-std) the products
have a closed form per layer, and writing it out is cheaper than autograd's double backward:

* ``J v`` runs forward through the layers. A layer ``y = x Wᵀ + b`` whose input already carries
  a tangent ``ẋ`` gives ``ẏ = ẋ Wᵀ + x V_Wᵀ + v_b``, computed as ONE matrix product of the
  concatenations ``[ẋ, x] [W, V_W]ᵀ``; an activation ``h = σ(y)`` gives ``ḣ = σ'(y) ⊙ ẏ`` with the
  slope ``σ'(y)`` stored at build (``1 - h²`` for tanh, ``[y > 0]`` for relu).
* ``Jᵀ w`` is the ordinary backward pass through the same stored activations.

The hidden tensors stay contiguous, and an activation's tangent ``σ'(y) ⊙ ẏ`` is written straight
into the ``ẋ`` half of the next layer's buffer. Autograd's double backward returns the weight
path's contribution to ``J v`` through a transpose, so its additions and activation derivatives
run on strided memory, a sizeable share of a product (``benchmarks/curvature.py`` measures both
paths; docs/benchmarks.md has the numbers). A layer with a few outputs (a policy's last
layer) is the one exception: on a CPU it is computed as ``(W xᵀ)ᵀ``, see :func:`_linear`.

The network is read with :func:`torch.fx.symbolic_trace`. Any operation outside the list above,
or a module that cannot be traced, makes :func:`trace` return ``None`` and :class:`~trustregion.GaussNewton`
keeps the autograd path, so the result never depends on which path ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from trustregion._vectors import flatten
from trustregion.operator import KroneckerFactors, KroneckerLayer

_ACTIVATION_FUNCTIONS = {torch.tanh: "tanh", torch.relu: "relu", F.relu: "relu"}
_ACTIVATION_MODULES = {nn.Tanh: "tanh", nn.ReLU: "relu"}


@dataclass
class _Linear:
    node: fx.Node
    source: fx.Node
    weight: int
    bias: int | None


@dataclass
class _Activation:
    node: fx.Node
    source: fx.Node
    kind: str


@dataclass
class _Parameter:
    node: fx.Node
    index: int


@dataclass
class Input:
    """A placeholder of the traced forward: one of the module's inputs."""

    node: fx.Node


_Step = _Linear | _Activation | _Parameter | Input


def trace(module: nn.Module, names: Sequence[str]) -> tuple[list[_Step], object] | None:
    """The module's forward as a list of supported steps and its output structure, or ``None``."""
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # any tracing failure means: keep the autograd path
        return None
    index = {name: i for i, name in enumerate(names)}
    modules = dict(module.named_modules())
    steps: list[_Step] = []
    output = None
    for node in graph.nodes:
        if node.op == "output":
            output = node.args[0]
            continue
        step = _read_node(node, index, modules)
        if step is None:
            return None
        steps.append(step)
    leaves, _ = tree_flatten(output)
    if not leaves or not all(isinstance(leaf, fx.Node) for leaf in leaves):
        return None
    return steps, output


def _read_node(node: fx.Node, index: dict[str, int], modules: dict[str, nn.Module]) -> _Step | None:
    if node.op == "placeholder":
        return Input(node)
    if node.op == "get_attr":
        return _Parameter(node, index[node.target]) if node.target in index else None
    if node.op == "call_function" and node.target is F.linear:
        return _read_functional_linear(node, index)
    if node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS and not node.kwargs:
        if len(node.args) == 1 and isinstance(node.args[0], fx.Node):
            return _Activation(node, node.args[0], _ACTIVATION_FUNCTIONS[node.target])
        return None
    if node.op == "call_method" and node.target in ("tanh", "relu") and len(node.args) == 1 and not node.kwargs:
        return _Activation(node, node.args[0], node.target)
    if node.op == "call_module":
        return _read_module(node, index, modules[node.target])
    return None


def _read_functional_linear(node: fx.Node, index: dict[str, int]) -> _Linear | None:
    args, kwargs = node.args, node.kwargs
    source = args[0] if args else kwargs.get("input")
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    if not isinstance(source, fx.Node) or not _is_parameter(weight, index):
        return None
    if bias is not None and not _is_parameter(bias, index):
        return None
    return _Linear(node, source, index[weight.target], None if bias is None else index[bias.target])


def _read_module(node: fx.Node, index: dict[str, int], module: nn.Module) -> _Step | None:
    if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], fx.Node):
        return None
    source = node.args[0]
    if type(module) is nn.Linear:
        weight, bias = f"{node.target}.weight", f"{node.target}.bias"
        if weight not in index or (module.bias is not None and bias not in index):
            return None
        return _Linear(node, source, index[weight], index[bias] if module.bias is not None else None)
    kind = _ACTIVATION_MODULES.get(type(module))
    if kind is None or getattr(module, "inplace", False):
        return None
    return _Activation(node, source, kind)


def _is_parameter(node: object, index: dict[str, int]) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr" and node.target in index


class LayerwiseLinearisation:
    """``J v`` and ``Jᵀ w`` of a traced network at fixed parameters and inputs (see the module docstring).

    Same interface as the autograd linearisation inside :mod:`trustregion.curvature.gauss_newton`:
    :attr:`outputs` (the forward values), :meth:`jacobian_product` and :meth:`transpose_product`.
    What it keeps between products: each layer's input (inside a ``[ẋ, x]`` buffer when the input
    has a tangent) and each activation's slope.
    """

    def __init__(self, steps: list[_Step], output: object, params: Sequence[Tensor], inputs: Sequence[Tensor]) -> None:
        self._steps, self._params = steps, [p.detach() for p in params]
        self._depends: set[fx.Node] = set()  # nodes whose value depends on the parameters
        self._layer_inputs: dict[fx.Node, Tensor] = {}  # x of each linear layer
        self._stacked: dict[fx.Node, Tensor] = {}  # [ẋ, x] of the layers whose input has a tangent
        self._slopes: dict[fx.Node, Tensor] = {}  # σ'(y) of each activation
        values: dict[fx.Node, Tensor] = {}
        placeholders = iter(inputs)
        with torch.no_grad():
            for step in steps:
                values[step.node] = self._forward(step, values, placeholders)
        self._output_nodes, self._structure = tree_flatten(output)
        self.outputs = tree_unflatten([values[n] for n in self._output_nodes], self._structure)
        self._output_like = [torch.zeros_like(values[n]) for n in self._output_nodes if n not in self._depends]
        activations = {step.node for step in steps if isinstance(step, _Activation)}
        self._tangent_slots = {  # activations whose only user is a layer with a [ẋ, x] buffer: ẋ's place in it
            step.source: self._stacked[step.node][..., : values[step.source].shape[-1]]
            for step in steps
            if isinstance(step, _Linear)
            and step.node in self._stacked
            and _only_user_is(step.source, step.node)
            and step.source in activations
        }
        self._in_place = {  # activations whose source's tangent is a fresh product used nowhere else
            step.node
            for step in steps
            if isinstance(step, _Activation) and _only_user_is(step.source, step.node) and step.source.op != "get_attr"
        }

    def _forward(self, step: _Step, values: dict[fx.Node, Tensor], placeholders) -> Tensor:
        if isinstance(step, Input):
            return next(placeholders)
        if isinstance(step, _Parameter):
            self._depends.add(step.node)
            return self._params[step.index]
        source = values[step.source]
        if isinstance(step, _Linear) or step.source in self._depends:
            self._depends.add(step.node)
        if isinstance(step, _Linear):
            if step.source in self._depends:
                stacked = self._stacked[step.node] = torch.cat([torch.empty_like(source), source], dim=-1)
                source = stacked[..., source.shape[-1] :]
            self._layer_inputs[step.node] = source
            bias = None if step.bias is None else self._params[step.bias]
            return F.linear(source, self._params[step.weight], bias)
        if step.kind == "tanh":
            value = torch.tanh(source)
            self._slopes[step.node] = 1 - value * value
            return value
        self._slopes[step.node] = (source > 0).to(source.dtype)
        return torch.relu(source)

    def jacobian_product(self, vector_parts: list[Tensor]) -> object:
        """``J v`` in the structure of the outputs; ``vector_parts`` shaped like the parameters."""
        tangents: dict[fx.Node, Tensor] = {}
        for step in self._steps:
            if step.node not in self._depends:
                continue
            if isinstance(step, _Parameter):
                tangents[step.node] = vector_parts[step.index]
            elif isinstance(step, _Linear):
                tangents[step.node] = self._linear_tangent(step, tangents.get(step.source), vector_parts)
            elif step.node in self._tangent_slots:  # written straight into the next layer's [ẋ, x]
                slot = self._tangent_slots[step.node]
                tangents[step.node] = torch.mul(tangents[step.source], self._slopes[step.node], out=slot)
            elif step.node in self._in_place:
                tangents[step.node] = tangents[step.source].mul_(self._slopes[step.node])
            else:
                tangents[step.node] = tangents[step.source] * self._slopes[step.node]
        constant = iter(self._output_like)
        flat = [tangents[n] if n in self._depends else next(constant) for n in self._output_nodes]
        return tree_unflatten(flat, self._structure)

    def _linear_tangent(self, step: _Linear, source_tangent: Tensor | None, parts: list[Tensor]) -> Tensor:
        bias_tangent = None if step.bias is None else parts[step.bias]
        if source_tangent is None:
            return _linear(self._layer_inputs[step.node], parts[step.weight], bias_tangent)
        stacked = self._stacked[step.node]  # [ẋ, x] [W, V_W]ᵀ: both terms in one product
        if step.source not in self._tangent_slots:
            stacked[..., : source_tangent.shape[-1]].copy_(source_tangent)
        return _linear(stacked, torch.cat([self._params[step.weight], parts[step.weight]], dim=-1), bias_tangent)

    def transpose_product(self, cotangent: object) -> Tensor:
        """``Jᵀw`` as one flat vector, for ``w`` in the structure of the outputs."""
        grads: list[Tensor | None] = [None] * len(self._params)

        def linear_layer(step: _Linear, here: Tensor) -> None:
            x = self._layer_inputs[step.node]
            rows, x_rows = here.reshape(-1, here.shape[-1]), x.reshape(-1, x.shape[-1])
            _accumulate(grads, step.weight, _weight_gradient(rows, x_rows))
            if step.bias is not None:
                _accumulate(grads, step.bias, rows.sum(0))

        def parameter(step: _Parameter, here: Tensor) -> None:
            _accumulate(grads, step.index, here.sum_to_size(self._params[step.index].shape))

        self._backward(cotangent, linear_layer, parameter)
        return flatten([torch.zeros_like(p) if g is None else g for g, p in zip(grads, self._params, strict=True)])

    def column_statistics(self, columns: object) -> ColumnStatistics | None:
        """Backpropagate ``K`` cotangents at once (a leading dimension ``K`` on each output tensor).

        With the columns of the output Fisher's square root (:meth:`OutputFisher.square_root`) this
        gives, per linear layer, its input rows ``x`` and the backpropagated vectors ``g`` (shape
        ``(K, N, out)``), from which the exact diagonal of ``Jᵀ M J`` and the K-FAC factors follow;
        and the exact diagonal for parameters used directly. ``None`` when the per-input structure
        those need is missing: a parameter used in two places, or a layer input that is not ``(N, in)``.
        """
        uses = self._parameter_uses()
        if len(uses) != len(set(uses)) or any(x.dim() != 2 for x in self._layer_inputs.values()):
            return None
        layers: list[tuple[_Linear, Tensor, Tensor]] = []
        diagonals: dict[int, Tensor] = {}

        def linear_layer(step: _Linear, here: Tensor) -> None:
            layers.append((step, self._layer_inputs[step.node], here))

        def parameter(step: _Parameter, here: Tensor) -> None:
            diagonals[step.index] = here.square().sum_to_size(self._params[step.index].shape)

        self._backward(columns, linear_layer, parameter)
        return ColumnStatistics(self._params, layers, diagonals)

    def _parameter_uses(self) -> list[int]:
        """The parameter index of every use: as a layer's weight or bias, or read directly elsewhere."""
        layers = {step.node: step for step in self._steps if isinstance(step, _Linear)}
        uses: list[int] = []
        for step in self._steps:
            if isinstance(step, _Linear):
                uses += [step.weight] if step.bias is None else [step.weight, step.bias]
            elif isinstance(step, _Parameter) and any(  # a read only as an F.linear's weight/bias counts there
                user not in layers or layers[user].source is step.node for user in step.node.users
            ):
                uses.append(step.index)
        return uses

    def _backward(self, cotangent: object, linear_layer, parameter) -> None:
        """The backward pass through the stored activations, calling the visitors at layers and parameters."""
        flat_cotangent, _ = tree_flatten(cotangent)
        pending: dict[fx.Node, Tensor] = {}
        owned: set[fx.Node] = set()  # pending cotangents computed here, free to overwrite
        for node, value in zip(self._output_nodes, flat_cotangent, strict=True):
            if node in self._depends:
                _send(pending, owned, node, value, fresh=False)
        for step in reversed(self._steps):
            here = pending.pop(step.node, None)
            if here is None:
                continue
            if isinstance(step, _Parameter):
                parameter(step, here)
            elif isinstance(step, _Linear):
                linear_layer(step, here)
                if step.source in self._depends:
                    _send(pending, owned, step.source, here @ self._params[step.weight])
            else:
                slope = self._slopes[step.node]
                _send(pending, owned, step.source, here.mul_(slope) if step.node in owned else here * slope)


class ColumnStatistics:
    """Per-layer inputs and backpropagated columns (:meth:`LayerwiseLinearisation.column_statistics`)."""

    def __init__(self, params: list[Tensor], layers: list, diagonals: dict[int, Tensor]) -> None:
        self._params, self._layers, self._diagonals = params, layers, diagonals
        sizes = [p.numel() for p in params]
        self._offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]

    def _slice(self, index: int) -> slice:
        return slice(self._offsets[index], self._offsets[index + 1])

    def diagonal(self, *, layers: bool = True) -> Tensor:
        """The exact ``diag(Jᵀ M J)``: per-input squares, ``Σ_{k,i} (g_{ki}²)ᵀ (x_i²)`` for a weight.

        ``layers=False`` leaves the linear layers' entries at zero (K-FAC replaces them).
        """
        parts = [torch.zeros_like(p) for p in self._params]
        for step, x, g in self._layers if layers else ():
            squares = g.square().sum(0)
            parts[step.weight] += squares.t() @ x.square()
            if step.bias is not None:
                parts[step.bias] += squares.sum(0)
        for index, diagonal in self._diagonals.items():
            parts[index] += diagonal
        return flatten(parts)

    def kronecker_factors(self) -> KroneckerFactors:
        """Each layer's ``Ā = (1/N) Σ x̄ x̄ᵀ`` and ``G = Σ g gᵀ``; the exact diagonal elsewhere (0 on layers)."""
        layers = []
        for step, x, g in self._layers:
            if step.bias is not None:
                x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
            rows = g.reshape(-1, g.shape[-1])
            bias = None if step.bias is None else self._slice(step.bias)
            layers.append(KroneckerLayer(self._slice(step.weight), bias, x.t() @ x / x.shape[0], rows.t() @ rows))
        return KroneckerFactors(tuple(layers), self.diagonal(layers=False))


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x Wᵀ + b``; on a CPU, a layer with a few outputs from a wide input is computed as ``(W xᵀ)ᵀ``.

    A product with 2 to 16 columns is a poor shape for the CPU matrix kernels, such as the output
    layer of a policy (a 128-wide ``[ẋ, x]`` into 2 or 3 outputs); the transposed product is several
    times faster there (docs/benchmarks.md). The result is a transposed view, which every later step
    accepts.
    """
    if x.device.type == "cpu" and x.dim() == 2 and 2 <= weight.shape[0] <= 16 and weight.shape[1] >= 32:
        product = (weight @ x.t()).t()
        return product if bias is None else product.add_(bias)
    return F.linear(x, weight, bias)


def _weight_gradient(rows: Tensor, inputs: Tensor) -> Tensor:
    """``rowsᵀ inputs``, a layer's ``out × in`` weight gradient; as ``(inputsᵀ rows)ᵀ`` when ``in < out``.

    Over a long batch dimension the CPU matrix kernels are several times faster when the result
    has the fewer rows: an 11-wide observation into 64 units took 345 µs one way and 107 µs the
    other for 2,048 rows (a policy's output layer, 64 into 3, is the opposite case). The result is
    then a transposed view, which every later step accepts.
    """
    if inputs.shape[-1] < rows.shape[-1]:
        return (inputs.t() @ rows).t()
    return rows.t() @ inputs


def _only_user_is(node: fx.Node, user: fx.Node) -> bool:
    return list(node.users) == [user]


def _accumulate(grads: list[Tensor | None], index: int, value: Tensor) -> None:
    grads[index] = value if grads[index] is None else grads[index] + value


def _send(
    pending: dict[fx.Node, Tensor], owned: set[fx.Node], node: fx.Node, value: Tensor, fresh: bool = True
) -> None:
    """Add ``value`` to the cotangent waiting at ``node``; a sum is always a fresh tensor."""
    if node in pending:
        pending[node] = pending[node] + value
        owned.add(node)
    else:
        pending[node] = value
        if fresh:
            owned.add(node)
        else:
            owned.discard(node)
