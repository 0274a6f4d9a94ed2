"""GaussNewton: equals Jᵀ M J (jacrev, explicit M) and, for each family, the KL Hessian at θ_old."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from trustregion_helpers import (
    DTYPE,
    MLP,
    GaussianMLP,
    bernoulli_kl,
    categorical_kl,
    dense_kl_hessian,
    flat_functional,
    gaussian_kl,
    multi_categorical_kl,
    random_vector,
    seeded,
    step_problem,
)

from trustregion import (
    BernoulliFisher,
    CategoricalFisher,
    DiagonalGaussianFisher,
    GaussNewton,
    KLHessian,
    MultiCategoricalFisher,
    OutputFisher,
)

SIZES = (3, 2)


def categorical_block(logits: Tensor) -> Tensor:
    """``diag(p) - p pᵀ`` for one row of logits."""
    p = torch.softmax(logits, -1)
    return torch.diag(p) - torch.outer(p, p)


def dense_categorical(logits: Tensor) -> Tensor:
    return torch.block_diag(*[categorical_block(row) for row in logits]) / logits.shape[0]


def dense_bernoulli(logits: Tensor) -> Tensor:
    p = torch.sigmoid(logits).reshape(-1)
    return torch.diag(p * (1 - p)) / logits.shape[0]


def dense_multi_categorical(logits: Tensor) -> Tensor:
    blocks = [categorical_block(chunk) for row in logits for chunk in torch.split(row, list(SIZES))]
    return torch.block_diag(*blocks) / logits.shape[0]


def dense_gaussian(outputs: tuple[Tensor, Tensor]) -> Tensor:
    """Fisher of the batch-mean KL of diagonal Gaussians in the outputs ``(mean, log_std)``."""
    mean, log_std = outputs
    batch = mean.shape[0]
    mean_block = torch.diag(torch.exp(-2 * log_std).expand_as(mean).reshape(-1)) / batch
    shared = mean.numel() // log_std.numel()  # inputs sharing each log_std entry
    log_std_block = torch.eye(log_std.numel(), dtype=mean.dtype) * 2.0 * shared / batch
    return torch.block_diag(mean_block, log_std_block)


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[int, int, int], nn.Module]  # (obs_dim, hidden, width) -> module
    fisher: Callable[[], OutputFisher]
    kl: Callable[[object, object], Tensor]
    dense_fisher: Callable[[object], Tensor]


FAMILIES = [
    Family("categorical", lambda o, h, k: MLP(o, h, k), CategoricalFisher, categorical_kl, dense_categorical),
    Family("bernoulli", lambda o, h, k: MLP(o, h, k), BernoulliFisher, bernoulli_kl, dense_bernoulli),
    Family(
        "multi_categorical",
        lambda o, h, k: MLP(o, h, sum(SIZES)),
        lambda: MultiCategoricalFisher(SIZES),
        multi_categorical_kl(SIZES),
        dense_multi_categorical,
    ),
    Family(
        "gaussian_state_independent_log_std",
        lambda o, h, k: GaussianMLP(o, h, k, (k,)),
        DiagonalGaussianFisher,
        gaussian_kl,
        dense_gaussian,
    ),
    Family(
        "gaussian_state_dependent_log_std",
        lambda o, h, k: GaussianMLP(o, h, k, None),
        DiagonalGaussianFisher,
        gaussian_kl,
        dense_gaussian,
    ),
]

shapes = st.fixed_dictionaries(
    {
        "batch": st.integers(1, 6),
        "obs_dim": st.integers(1, 4),
        "hidden": st.integers(1, 4),
        "width": st.integers(2, 4),
        "seed": st.integers(0, 2**31 - 1),
    }
)


def policy_and_batch(family: Family, shape: dict[str, int]) -> tuple[nn.Module, Tensor]:
    module = seeded(lambda: family.build(shape["obs_dim"], shape["hidden"], shape["width"]), shape["seed"])
    generator = torch.Generator().manual_seed(shape["seed"])
    obs = torch.randn(shape["batch"], shape["obs_dim"], generator=generator, dtype=DTYPE)
    return module, obs


def gauss_newton_dense(module: nn.Module, obs: Tensor, fisher: OutputFisher, *, layerwise: bool = True) -> Tensor:
    params = list(module.parameters())
    loss = sum((p**2).sum() for p in params)  # GaussNewton only needs the parameters
    curvature = GaussNewton.for_module(module, obs, fisher, layerwise=layerwise)
    operator = curvature.build(step_problem(params, loss))
    with torch.no_grad():  # the optimizer solves under no_grad
        return operator.dense(DTYPE)


def jacobian_rows(module: nn.Module, obs: Tensor) -> Tensor:
    """``J = ∂z/∂θ`` with every output flattened to a row (tuple outputs concatenated)."""
    theta0, at = flat_functional(module)
    jacobian = torch.func.jacrev(lambda theta: at(theta)(obs))(theta0)
    parts = [jacobian] if isinstance(jacobian, Tensor) else list(jacobian)
    return torch.cat([part.reshape(-1, theta0.numel()) for part in parts])


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
@pytest.mark.parametrize("layerwise", [True, False], ids=["layerwise", "autograd"])
@settings(max_examples=8)
@given(shape=shapes)
def test_gauss_newton_equals_jt_m_j(family: Family, layerwise: bool, shape: dict[str, int]) -> None:
    module, obs = policy_and_batch(family, shape)
    with torch.no_grad():
        outputs = module(obs)
    jacobian = jacobian_rows(module, obs)
    expected = jacobian.T @ family.dense_fisher(outputs) @ jacobian
    actual = gauss_newton_dense(module, obs, family.fisher(), layerwise=layerwise)
    assert torch.allclose(actual, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
@settings(max_examples=8)
@given(shape=shapes)
def test_gauss_newton_equals_the_kl_hessian_at_the_old_parameters(family: Family, shape: dict[str, int]) -> None:
    module, obs = policy_and_batch(family, shape)
    expected = dense_kl_hessian(module, obs, family.kl)
    actual = gauss_newton_dense(module, obs, family.fisher())
    assert torch.allclose(actual, expected, rtol=1e-9, atol=1e-11)

    params = list(module.parameters())
    kl = family.kl(tuple_or_tensor_detached(module(obs)), module(obs))
    kl_operator = KLHessian().build(step_problem(params, kl, kl))
    assert torch.allclose(kl_operator.dense(DTYPE), actual, rtol=1e-9, atol=1e-11)


def tuple_or_tensor_detached(outputs: object) -> object:
    return outputs.detach() if isinstance(outputs, Tensor) else tuple(t.detach() for t in outputs)


def test_gauss_newton_equals_the_kl_hessian_for_a_log_std_of_shape_one_by_actions() -> None:
    # A state-independent log_std kept as a (1, A) parameter and returned unexpanded: it is shared by every
    # input exactly like an (A,) vector, so its Fisher block is 2 (not 2 / N).
    module = seeded(lambda: GaussianMLP(obs_dim=3, hidden=4, act_dim=2, log_std_shape=(1, 2)), seed=0)
    obs = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    expected = dense_kl_hessian(module, obs, gaussian_kl)
    actual = gauss_newton_dense(module, obs, DiagonalGaussianFisher())
    assert torch.allclose(actual, expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
@settings(max_examples=5)
@given(shape=shapes)
def test_gauss_newton_is_symmetric_and_positive_semidefinite(family: Family, shape: dict[str, int]) -> None:
    module, obs = policy_and_batch(family, shape)
    params = list(module.parameters())
    operator = GaussNewton.for_module(module, obs, family.fisher()).build(
        step_problem(params, sum(p.sum() for p in params))
    )
    assert operator.positive_semidefinite
    generator = torch.Generator().manual_seed(shape["seed"] + 1)
    u, v = random_vector(operator.dim, generator), random_vector(operator.dim, generator)
    with torch.no_grad():
        assert (u @ operator(v)).item() == pytest.approx((v @ operator(u)).item(), rel=1e-10, abs=1e-13)
        dense = operator.dense(DTYPE)
    assert torch.linalg.eigvalsh(0.5 * (dense + dense.T)).min().item() >= -1e-10


@pytest.mark.parametrize("layerwise", [True, False], ids=["layerwise", "autograd"])
def test_gauss_newton_products_reuse_the_cached_forward_pass(layerwise: bool) -> None:
    family = FAMILIES[0]
    module, obs = policy_and_batch(family, {"batch": 4, "obs_dim": 3, "hidden": 3, "width": 3, "seed": 1})
    calls = []
    module.register_forward_pre_hook(lambda *_: calls.append(1))

    params = list(module.parameters())
    curvature = GaussNewton.for_module(module, obs, CategoricalFisher(), layerwise=layerwise)
    operator = curvature.build(step_problem(params, params[0].sum()))
    forwards_in_build = len(calls)
    with torch.no_grad():
        operator.dense(DTYPE)
    assert forwards_in_build <= 1  # the layer-wise path evaluates its own trace, the autograd path the module once
    assert len(calls) == forwards_in_build  # no product runs the model again
    assert operator.products == operator.dim


@pytest.mark.parametrize("layerwise", [True, False], ids=["layerwise", "autograd"])
def test_with_inputs_is_the_same_operator_on_another_batch(layerwise: bool) -> None:
    family = FAMILIES[3]  # Gaussian with a state-independent log-std: a tuple output
    shape = {"batch": 5, "obs_dim": 3, "hidden": 4, "width": 2, "seed": 4}
    module, obs = policy_and_batch(family, shape)
    other = torch.randn(7, shape["obs_dim"], generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    params = list(module.parameters())
    curvature = GaussNewton.for_module(module, obs, family.fisher(), layerwise=layerwise)
    moved = curvature.with_inputs(other)
    problem = step_problem(params, sum(p.sum() for p in params))
    with torch.no_grad():
        on_other, on_first = moved.build(problem).dense(DTYPE), curvature.build(problem).dense(DTYPE)
    torch.testing.assert_close(on_other, dense_kl_hessian(module, other, family.kl), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(on_first, dense_kl_hessian(module, obs, family.kl), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(on_first, gauss_newton_dense(module, obs, family.fisher(), layerwise=layerwise))


def test_gauss_newton_with_a_pure_output_function() -> None:
    module, obs = policy_and_batch(FAMILIES[0], {"batch": 3, "obs_dim": 2, "hidden": 3, "width": 3, "seed": 2})
    names = [name for name, _ in module.named_parameters()]

    def outputs(*params: Tensor) -> Tensor:
        return torch.func.functional_call(module, dict(zip(names, params, strict=True)), (obs,))

    params = list(module.parameters())
    operator = GaussNewton(outputs, CategoricalFisher()).build(step_problem(params, params[0].sum()))
    with torch.no_grad():
        actual = operator.dense(DTYPE)
    assert torch.allclose(actual, dense_kl_hessian(module, obs, categorical_kl), rtol=1e-9, atol=1e-11)


def test_gauss_newton_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="outputs must be callable"):
        GaussNewton(torch.ones(2), CategoricalFisher())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"fisher must be an? OutputFisher"):
        GaussNewton(lambda *p: p[0], KLHessian())  # type: ignore[arg-type]
    module = seeded(lambda: MLP(2, 3, 2), seed=0)
    obs = torch.zeros(1, 2, dtype=DTYPE)
    with pytest.raises(TypeError, match="inputs must be the batch"):  # the batch itself, no longer a callable
        GaussNewton.for_module(module, lambda: obs, CategoricalFisher())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="inputs must be the batch"):
        GaussNewton.for_module(module, obs, CategoricalFisher()).with_inputs([obs])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="for_module"):
        GaussNewton(lambda *p: p[0], CategoricalFisher()).with_inputs(obs)


def test_gauss_newton_for_module_rejects_other_parameters() -> None:
    module = seeded(lambda: MLP(2, 3, 2), seed=0)
    other = nn.Parameter(torch.zeros(3, dtype=DTYPE))
    curvature = GaussNewton.for_module(module, torch.zeros(1, 2, dtype=DTYPE), CategoricalFisher())
    with pytest.raises(ValueError, match=r"module\.parameters\(\)"):
        curvature.build(step_problem([other], other.sum()))
    reordered = list(module.parameters())[::-1]
    with pytest.raises(ValueError, match=r"module\.parameters\(\)"):
        curvature.build(step_problem(reordered, sum(p.sum() for p in reordered)))
