"""Output-space Fishers M against the Hessian of torch.distributions KLs; the seeds' worked examples."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.distributions import Categorical, kl_divergence
from trustregion_helpers import DTYPE, bernoulli_kl, categorical_kl, gaussian_kl, multi_categorical_kl

from trustregion import BernoulliFisher, CategoricalFisher, DiagonalGaussianFisher, MultiCategoricalFisher

OLD = torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=DTYPE)
NEW = torch.tensor([[0.5, 0.2, 0.2, 0.1]], dtype=DTYPE)
SEED_KL = 0.4 * math.log(0.4 / 0.5) + 0.3 * math.log(0.3 / 0.2)


def quadratic_kl(old_logits: Tensor, new_logits: Tensor) -> float:
    """``½ Δzᵀ M Δz`` with ``M`` from :class:`CategoricalFisher` at the old logits."""
    delta = new_logits - old_logits
    product = CategoricalFisher().bind(old_logits)
    return 0.5 * (delta * product(delta)).sum().item()


def test_seed_kl_of_two_categoricals() -> None:
    kl = kl_divergence(Categorical(probs=OLD), Categorical(probs=NEW)).item()
    assert kl == pytest.approx(SEED_KL, rel=1e-14)
    assert kl == pytest.approx(0.032382, abs=5e-7)


def test_seed_kl_quadratic_model_from_categorical_fisher() -> None:
    old_logits, new_logits = OLD.log(), NEW.log()
    model = quadratic_kl(old_logits, new_logits)
    # ½ Var_p(Δz) in closed form: the Fisher of a softmax is diag(p) - p pᵀ.
    delta = (new_logits - old_logits)[0]
    p = OLD[0]
    assert model == pytest.approx(0.5 * ((p * delta**2).sum() - (p @ delta) ** 2).item(), rel=1e-13)
    assert model == pytest.approx(SEED_KL, rel=0.06)  # 0.0341 vs 0.0324: a second-order model


def test_quadratic_model_error_of_the_seed_kl_is_third_order() -> None:
    old_logits, direction = OLD.log(), NEW.log() - OLD.log()

    def model_error(t: float) -> float:
        new_logits = old_logits + t * direction
        kl = kl_divergence(Categorical(logits=old_logits), Categorical(logits=new_logits)).item()
        return abs(quadratic_kl(old_logits, new_logits) - kl)

    ratios = [model_error(t) / model_error(t / 2) for t in (0.2, 0.1, 0.05)]
    assert all(7.0 < ratio < 9.0 for ratio in ratios)  # halving t divides the error by 2³


def test_seed_surrogate_sums_ratio_times_advantage() -> None:
    new_log_probs = torch.tensor([0.3, 0.6], dtype=DTYPE).log().requires_grad_()
    old_log_probs = torch.tensor([0.2, 0.5], dtype=DTYPE).log()
    advantages = torch.tensor([5.0, -1.0], dtype=DTYPE)
    surrogate = (torch.exp(new_log_probs - old_log_probs) * advantages).sum()
    assert surrogate.item() == pytest.approx(7.5 - 1.2, rel=1e-14)
    assert surrogate.item() == pytest.approx(6.3, rel=1e-14)
    (gradient,) = torch.autograd.grad(surrogate, new_log_probs)
    assert torch.allclose(gradient, torch.tensor([1.5 * 5.0, 1.2 * -1.0], dtype=DTYPE), rtol=1e-14)


# ----------------------------------------------------------------------------- M = output-space KL Hessian


def output_kl_hessian(kl, outputs: Tensor) -> Tensor:
    """``∇²_z' KL(z || z')`` at ``z' = z``, dense over the flattened outputs."""
    flat_hessian = torch.autograd.functional.hessian(
        lambda flat: kl(outputs, flat.view_as(outputs)), outputs.reshape(-1).clone()
    )
    return flat_hessian


def dense_from_product(product, outputs: Tensor) -> Tensor:
    eye = torch.eye(outputs.numel(), dtype=outputs.dtype)
    return torch.stack([product(column.view_as(outputs)).reshape(-1) for column in eye], dim=1)


logits_shapes = st.tuples(st.integers(1, 5), st.integers(2, 5), st.integers(0, 2**31 - 1))


@settings(max_examples=10)
@given(shape=logits_shapes)
def test_categorical_fisher_is_the_output_kl_hessian(shape: tuple[int, int, int]) -> None:
    batch, classes, seed = shape
    logits = 2 * torch.randn(batch, classes, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    product = CategoricalFisher().bind(logits)
    expected = output_kl_hessian(categorical_kl, logits)
    assert torch.allclose(dense_from_product(product, logits), expected, rtol=1e-10, atol=1e-13)
    assert torch.allclose(product(torch.ones_like(logits)), torch.zeros_like(logits), atol=1e-15)


@settings(max_examples=10)
@given(shape=logits_shapes)
def test_bernoulli_fisher_is_the_output_kl_hessian(shape: tuple[int, int, int]) -> None:
    batch, variables, seed = shape
    logits = 2 * torch.randn(batch, variables, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    product = BernoulliFisher().bind(logits)
    expected = output_kl_hessian(bernoulli_kl, logits)
    assert torch.allclose(dense_from_product(product, logits), expected, rtol=1e-10, atol=1e-13)


@settings(max_examples=10)
@given(
    batch=st.integers(1, 4),
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    seed=st.integers(0, 2**31 - 1),
)
def test_multi_categorical_fisher_is_the_output_kl_hessian(batch: int, sizes: list[int], seed: int) -> None:
    logits = 2 * torch.randn(batch, sum(sizes), generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    product = MultiCategoricalFisher(sizes).bind(logits)
    expected = output_kl_hessian(multi_categorical_kl(sizes), logits)
    assert torch.allclose(dense_from_product(product, logits), expected, rtol=1e-10, atol=1e-13)


@settings(max_examples=10)
@given(batch=st.integers(1, 5), act_dim=st.integers(1, 3), shared=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_diagonal_gaussian_fisher_is_the_output_kl_hessian(batch: int, act_dim: int, shared: bool, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn(batch, act_dim, generator=generator, dtype=DTYPE)
    log_std = 0.5 * torch.randn((act_dim,) if shared else (batch, act_dim), generator=generator, dtype=DTYPE)
    product = DiagonalGaussianFisher().bind((mean, log_std))

    def kl(flat_old: Tensor, flat_new: Tensor) -> Tensor:
        split = [mean.numel(), log_std.numel()]
        old_mean, old_log_std = torch.split(flat_old, split)
        new_mean, new_log_std = torch.split(flat_new, split)
        return gaussian_kl(
            (old_mean.view_as(mean), old_log_std.view_as(log_std)),
            (new_mean.view_as(mean), new_log_std.view_as(log_std)),
        )

    outputs = torch.cat([mean.reshape(-1), log_std.reshape(-1)])
    expected = torch.autograd.functional.hessian(lambda flat: kl(outputs, flat), outputs.clone())
    eye = torch.eye(outputs.numel(), dtype=DTYPE)
    columns = []
    for column in eye:
        tangent_mean, tangent_log_std = torch.split(column, [mean.numel(), log_std.numel()])
        out_mean, out_log_std = product((tangent_mean.view_as(mean), tangent_log_std.view_as(log_std)))
        columns.append(torch.cat([out_mean.reshape(-1), out_log_std.reshape(-1)]))
    assert torch.allclose(torch.stack(columns, dim=1), expected, rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------------------- bad input


def test_logit_fishers_need_a_batch_of_logits() -> None:
    for fisher in (CategoricalFisher(), BernoulliFisher(), MultiCategoricalFisher([3])):
        with pytest.raises(ValueError, match=r"\(N, K\)"):
            fisher.bind(torch.zeros(3, dtype=DTYPE))
        with pytest.raises(TypeError, match="one logits tensor"):
            fisher.bind((torch.zeros(2, 3, dtype=DTYPE), torch.zeros(3, dtype=DTYPE)))


@pytest.mark.parametrize("sizes", [[], [0], [3, -1]])
def test_multi_categorical_fisher_rejects_bad_sizes(sizes: list[int]) -> None:
    with pytest.raises(ValueError, match="sizes"):
        MultiCategoricalFisher(sizes)


def test_multi_categorical_fisher_checks_the_number_of_logits() -> None:
    with pytest.raises(ValueError, match="sum to 5"):
        MultiCategoricalFisher([3, 2]).bind(torch.zeros(2, 4, dtype=DTYPE))


def test_diagonal_gaussian_fisher_needs_mean_and_log_std() -> None:
    with pytest.raises(TypeError, match=r"\(mean, log_std\)"):
        DiagonalGaussianFisher().bind(torch.zeros(2, 3, dtype=DTYPE))
