"""The layer-wise Gauss-Newton products against the autograd path, on random networks.

Which modules take the layer-wise path is part of the contract: linear layers, tanh / relu and
parameters returned as outputs do; anything else falls back to autograd with the same result.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from trustregion_helpers import DTYPE, random_vector, step_problem

from trustregion import CategoricalFisher, DiagonalGaussianFisher, GaussNewton, OutputFisher
from trustregion.curvature.layerwise import LayerwiseLinearisation, _linear, trace

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class FunctionalPolicy(nn.Module):
    """Layers applied with ``F.linear`` in a loop, a log-std parameter and, optionally, the last
    hidden features as a third output (so one activation feeds both a layer and the output)."""

    def __init__(self, sizes: list[int], activations: list[str], bias: bool, features_out: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in itertools.pairwise(sizes))
        self.activations = [ACTIVATIONS[name] for name in activations]
        self.log_std = nn.Parameter(0.3 * torch.randn(sizes[-1]))
        self.features_out = features_out

    def forward(self, obs: Tensor) -> tuple[Tensor, ...]:
        x = obs
        for layer, activation in zip(self.layers[:-1], self.activations, strict=True):
            x = activation(F.linear(x, layer.weight, layer.bias))
        mean = F.linear(x, self.layers[-1].weight, self.layers[-1].bias)
        return (mean, self.log_std, x) if self.features_out else (mean, self.log_std)


class FeaturesFisher(DiagonalGaussianFisher):
    """The Gaussian Fisher on ``(mean, log_std)`` plus an identity block on extra features."""

    def bind(self, outputs):
        mean, log_std, features = outputs
        gaussian = super().bind((mean, log_std))
        scale = 1.0 / features.shape[0]

        def product(tangent):
            mean_t, log_std_t, features_t = tangent
            return (*gaussian((mean_t, log_std_t)), scale * features_t)

        return product


networks = st.fixed_dictionaries(
    {
        "depth": st.integers(1, 3),
        "width": st.integers(1, 5),
        "obs_dim": st.integers(1, 4),
        "act_dim": st.integers(1, 3),
        "batch": st.integers(1, 6),
        "activation": st.sampled_from(sorted(ACTIVATIONS)),
        "bias": st.booleans(),
        "features_out": st.booleans(),
        "seed": st.integers(0, 2**31 - 1),
    }
)


def build_network(spec: dict) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(spec["seed"])
    sizes = [spec["obs_dim"], *[spec["width"]] * spec["depth"], spec["act_dim"]]
    module = FunctionalPolicy(sizes, [spec["activation"]] * spec["depth"], spec["bias"], spec["features_out"])
    return module.to(DTYPE), torch.randn(spec["batch"], spec["obs_dim"], dtype=DTYPE)


def dense_operator(module: nn.Module, obs: Tensor, fisher, layerwise: bool) -> Tensor:
    params = list(module.parameters())
    curvature = GaussNewton.for_module(module, obs, fisher, layerwise=layerwise)
    operator = curvature.build(step_problem(params, sum((p**2).sum() for p in params)))
    with torch.no_grad():
        return operator.dense(DTYPE)


@settings(max_examples=25, deadline=None)
@given(spec=networks)
def test_layerwise_products_equal_the_autograd_path(spec: dict) -> None:
    module, obs = build_network(spec)
    names = [name for name, _ in module.named_parameters()]
    assert trace(module, names) is not None  # the fast path really runs
    fisher = FeaturesFisher() if spec["features_out"] else DiagonalGaussianFisher()
    expected = dense_operator(module, obs, fisher, layerwise=False)
    actual = dense_operator(module, obs, fisher, layerwise=True)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_products_leave_their_input_alone_and_repeat_exactly() -> None:
    module, obs = build_network(
        {"depth": 2, "width": 5, "obs_dim": 3, "act_dim": 2, "batch": 7, "activation": "tanh", "bias": True}
        | {"features_out": True, "seed": 3}
    )
    params = list(module.parameters())
    operator = GaussNewton.for_module(module, obs, FeaturesFisher()).build(
        step_problem(params, sum((p**2).sum() for p in params))
    )
    vector = random_vector(operator.dim, torch.Generator().manual_seed(0))
    copy = vector.clone()
    with torch.no_grad():
        first, second = operator(vector), operator(vector)
    assert torch.equal(vector, copy)
    assert torch.equal(first, second)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 40),
    inputs=st.integers(1, 70),
    outputs=st.integers(1, 20),
    bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_linear_equals_f_linear_in_either_orientation(batch, inputs, outputs, bias, seed) -> None:
    """Layers with a few outputs from a wide input take the transposed product; the value is the same."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, inputs, dtype=DTYPE, generator=generator)
    weight = torch.randn(outputs, inputs, dtype=DTYPE, generator=generator)
    b = torch.randn(outputs, dtype=DTYPE, generator=generator) if bias else None
    torch.testing.assert_close(_linear(x, weight, b), F.linear(x, weight, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act_dim", [1, 3, 16, 17])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_wide_networks_match_the_autograd_path(act_dim: int, activation: str) -> None:
    """Width 24 (a 48-wide ``[ẋ, x]``) with 3 or 16 actions takes the transposed output product; 1 and 17 do not."""
    spec = {"depth": 2, "width": 24, "obs_dim": 5, "act_dim": act_dim, "batch": 33, "activation": activation}
    module, obs = build_network(spec | {"bias": True, "features_out": False, "seed": act_dim})
    params = list(module.parameters())
    problem = step_problem(params, sum((p**2).sum() for p in params))
    operators = [
        GaussNewton.for_module(module, obs, DiagonalGaussianFisher(), layerwise=fast).build(problem)
        for fast in (False, True)
    ]
    generator = torch.Generator().manual_seed(act_dim)
    with torch.no_grad():
        for _ in range(3):
            vector = random_vector(operators[0].dim, generator)
            expected, actual = (operator(vector) for operator in operators)
            torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


class Branching(nn.Module):
    """Values used twice: a pre-activation that is also an output, an activation of a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(3, 4), nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.randn(2))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pre_activation = self.first(obs)
        return self.second(torch.tanh(pre_activation)), pre_activation, torch.tanh(self.scale)


class IdentityFisher(OutputFisher):
    """``M = I`` on every output: ``Jᵀ M J = JᵀJ``."""

    def bind(self, outputs: object):
        return lambda tangents: tangents


def test_values_used_twice_are_not_overwritten_by_the_products() -> None:
    module = Branching().to(DTYPE)
    obs = torch.randn(5, 3, dtype=DTYPE)
    names = [name for name, _ in module.named_parameters()]
    params = list(module.parameters())
    expected = dense_operator(module, obs, IdentityFisher(), layerwise=False)
    torch.testing.assert_close(dense_operator(module, obs, IdentityFisher(), layerwise=True), expected)
    # J v leaves v alone, and Jᵀ w leaves w alone
    linearisation = LayerwiseLinearisation(*trace(module, names), params, (obs,))
    parts = [torch.randn_like(p) for p in params]
    parts_before = [part.clone() for part in parts]
    tangents = linearisation.jacobian_product(parts)
    assert all(torch.equal(a, b) for a, b in zip(parts, parts_before, strict=True))
    tangents_before = [t.clone() for t in tangents]
    linearisation.transpose_product(tangents)
    assert all(torch.equal(a, b) for a, b in zip(tangents, tangents_before, strict=True))


class MethodActivations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, obs: Tensor) -> Tensor:
        return self.second(self.first(obs).tanh().relu())


def test_method_style_activations_take_the_layerwise_path() -> None:
    module = MethodActivations().to(DTYPE)
    obs = torch.randn(5, 4, dtype=DTYPE)
    assert trace(module, [name for name, _ in module.named_parameters()]) is not None
    expected = dense_operator(module, obs, CategoricalFisher(), layerwise=False)
    torch.testing.assert_close(dense_operator(module, obs, CategoricalFisher(), layerwise=True), expected)


def test_sequential_networks_take_the_layerwise_path() -> None:
    module = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).to(DTYPE)
    obs = torch.randn(5, 4, dtype=DTYPE)
    assert trace(module, [name for name, _ in module.named_parameters()]) is not None
    expected = dense_operator(module, obs, CategoricalFisher(), layerwise=False)
    torch.testing.assert_close(dense_operator(module, obs, CategoricalFisher(), layerwise=True), expected)


@pytest.mark.parametrize(
    "module",
    [
        nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)),
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2)),
        nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 2)),
    ],
    ids=["layer_norm", "inplace_relu", "sigmoid"],
)
def test_other_operations_fall_back_to_autograd_with_the_same_operator(module: nn.Module) -> None:
    module = module.to(DTYPE)
    obs = torch.randn(5, 4, dtype=DTYPE)
    assert trace(module, [name for name, _ in module.named_parameters()]) is None
    layerwise = dense_operator(module, obs, CategoricalFisher(), layerwise=True)
    torch.testing.assert_close(layerwise, dense_operator(module, obs, CategoricalFisher(), layerwise=False))
