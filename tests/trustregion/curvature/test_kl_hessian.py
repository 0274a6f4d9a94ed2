"""KLHessian: the dense operator equals torch.autograd.functional.hessian of the mean KL."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trustregion_helpers import (
    DTYPE,
    MLP,
    GaussianMLP,
    categorical_kl,
    dense_kl_hessian,
    flat_functional,
    gaussian_kl,
    random_vector,
    seeded,
    step_problem,
)

from trustregion import KLHessian

seeds = st.integers(0, 2**31 - 1)


def categorical_setup(batch: int, obs_dim: int, hidden: int, actions: int, seed: int):
    module = seeded(lambda: MLP(obs_dim, hidden, actions), seed)
    obs = torch.randn(batch, obs_dim, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    return module, obs


@settings(max_examples=10)
@given(
    batch=st.integers(1, 6), obs_dim=st.integers(1, 4), hidden=st.integers(1, 4), actions=st.integers(2, 4), seed=seeds
)
def test_kl_hessian_equals_the_dense_hessian_of_the_kl_at_the_old_parameters(
    batch: int, obs_dim: int, hidden: int, actions: int, seed: int
) -> None:
    module, obs = categorical_setup(batch, obs_dim, hidden, actions, seed)
    params = list(module.parameters())
    old_logits = module(obs).detach()
    kl = categorical_kl(old_logits, module(obs))
    operator = KLHessian().build(step_problem(params, kl, kl))

    dense = operator.dense(DTYPE)
    assert operator.products == operator.dim == sum(p.numel() for p in params)
    assert torch.allclose(dense, dense_kl_hessian(module, obs, categorical_kl), rtol=1e-9, atol=1e-11)
    assert torch.linalg.eigvalsh(0.5 * (dense + dense.T)).min().item() >= -1e-10
    generator = torch.Generator().manual_seed(seed + 1)
    u, v = random_vector(operator.dim, generator), random_vector(operator.dim, generator)
    assert (u @ operator(v)).item() == pytest.approx((v @ operator(u)).item(), rel=1e-10, abs=1e-13)


@settings(max_examples=10)
@given(batch=st.integers(1, 5), act_dim=st.integers(1, 3), seed=seeds)
def test_kl_hessian_away_from_the_old_parameters_is_the_plain_hessian(batch: int, act_dim: int, seed: int) -> None:
    # Away from θ_old the KL's Hessian is not the Fisher; KLHessian is still its exact Hessian.
    module = seeded(lambda: GaussianMLP(2, 3, act_dim, (act_dim,)), seed)
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, 2, generator=generator, dtype=DTYPE)
    target = (torch.randn(batch, act_dim, generator=generator, dtype=DTYPE), 0.2 * torch.ones(act_dim, dtype=DTYPE))
    params = list(module.parameters())
    kl = gaussian_kl(target, module(obs))
    operator = KLHessian().build(step_problem(params, kl, kl))

    theta0, at = flat_functional(module)
    expected = torch.autograd.functional.hessian(lambda theta: gaussian_kl(target, at(theta)(obs)), theta0)
    assert torch.allclose(operator.dense(DTYPE), expected, rtol=1e-9, atol=1e-11)


def test_kl_hessian_products_under_no_grad_and_parameters_the_kl_ignores() -> None:
    module, obs = categorical_setup(4, 3, 3, 3, seed=5)
    unused = torch.nn.Parameter(torch.ones(2, dtype=DTYPE))
    params = [*module.parameters(), unused]
    old_logits = module(obs).detach()
    kl = categorical_kl(old_logits, module(obs))
    operator = KLHessian().build(step_problem(params, kl, kl))
    with torch.no_grad():
        dense = operator.dense(DTYPE)
    n = operator.dim - 2
    assert torch.allclose(dense[:n, :n], dense_kl_hessian(module, obs, categorical_kl), rtol=1e-9, atol=1e-11)
    assert torch.count_nonzero(dense[n:]) == 0 and torch.count_nonzero(dense[:, n:]) == 0


def test_kl_hessian_of_a_locally_linear_constraint_is_zero() -> None:
    theta = torch.nn.Parameter(torch.ones(3, dtype=DTYPE))
    constant = 0.0 * theta.sum()  # has a graph; its gradient does not depend on θ
    operator = KLHessian().build(step_problem([theta], theta.sum(), constant))
    assert torch.equal(operator.dense(DTYPE), torch.zeros(3, 3, dtype=DTYPE))


def test_kl_hessian_needs_a_constraint() -> None:
    theta = torch.nn.Parameter(torch.ones(3, dtype=DTYPE))
    with pytest.raises(ValueError, match=r"\(loss, mean_kl\)"):
        KLHessian().build(step_problem([theta], (theta**2).sum(), None))
