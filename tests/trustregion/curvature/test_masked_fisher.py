"""Masked categoricals (action masking): the masked output Fishers and GaussNewton built with them.

References: the dense float64 Hessian of the mean KL of the masked distributions at ``θ_old``, with the
forbidden logits set to the dtype's most negative finite number (so the KL is written without ``-inf``), and
the closed form ``diag(p) - p pᵀ`` of the masked probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from trustregion_helpers import DTYPE, MLP, dense_kl_hessian, seeded, step_problem

from trustregion import (
    CategoricalFisher,
    GaussNewton,
    KLHessian,
    LinearOperator,
    MultiCategoricalFisher,
    OutputFisher,
)

SIZES = (3, 1, 2)


def masked_log_probs(logits: Tensor, mask: Tensor) -> Tensor:
    """Log-softmax over the allowed logits; a forbidden entry's probability underflows to exactly 0."""
    return logits.masked_fill(~mask, torch.finfo(logits.dtype).min).log_softmax(-1)


def masked_kl(mask: Tensor, sizes: Sequence[int] | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """Mean over the batch of ``KL(old || new)`` of the masked categoricals (one per slice with ``sizes``)."""
    split = list(sizes) if sizes is not None else mask.shape[-1]

    def kl(old_logits: Tensor, new_logits: Tensor) -> Tensor:
        total = torch.zeros(mask.shape[0], dtype=new_logits.dtype)
        for old, new, allowed in zip(
            old_logits.split(split, -1), new_logits.split(split, -1), mask.split(split, -1), strict=True
        ):
            old_log_probs, new_log_probs = masked_log_probs(old, allowed), masked_log_probs(new, allowed)
            total = total + (old_log_probs.exp() * (old_log_probs - new_log_probs)).sum(-1)
        return total.mean()

    return kl


def dense_masked_fisher(logits: Tensor, mask: Tensor, sizes: Sequence[int] | None = None) -> Tensor:
    """``(1/N) M`` per input, shape ``(N, K, K)``: ``diag(p) - p pᵀ`` per factor, blocks on the diagonal."""
    split = list(sizes) if sizes is not None else [mask.shape[-1]]
    rows = []
    for row, allowed in zip(logits, mask, strict=True):
        probs = [masked_log_probs(z, m).exp() for z, m in zip(row.split(split), allowed.split(split), strict=True)]
        rows.append(torch.block_diag(*[torch.diag(p) - torch.outer(p, p) for p in probs]))
    return torch.stack(rows) / logits.shape[0]


@st.composite
def masked_batches(draw: st.DrawFn, sizes: Sequence[int] | None = None) -> dict[str, object]:
    """A network shape, a seed and a mask with an allowed entry in every row (every factor's slice).

    Each entry is forbidden or not, then one drawn entry per row (per slice) is allowed again; shrinking
    goes towards no mask at all.
    """
    factors = list(sizes) if sizes is not None else [draw(st.integers(2, 4))]
    batch = draw(st.integers(1, 5))
    rows = []
    for _ in range(batch):
        row = []
        for size in factors:
            allowed = [not forbidden for forbidden in draw(st.lists(st.booleans(), min_size=size, max_size=size))]
            allowed[draw(st.integers(0, size - 1))] = True
            row += allowed
        rows.append(row)
    return {
        "obs_dim": draw(st.integers(1, 3)),
        "hidden": draw(st.integers(1, 4)),
        "seed": draw(st.integers(0, 2**31 - 1)),
        "mask": torch.tensor(rows, dtype=torch.bool),
    }


def policy_and_batch(case: dict[str, object]) -> tuple[nn.Module, Tensor, Tensor]:
    mask = case["mask"]
    module = seeded(lambda: MLP(case["obs_dim"], case["hidden"], mask.shape[-1]), case["seed"])
    obs = torch.randn(
        mask.shape[0], case["obs_dim"], generator=torch.Generator().manual_seed(case["seed"]), dtype=DTYPE
    )
    return module, obs, mask


def built(curvature: GaussNewton, module: nn.Module) -> LinearOperator:
    params = list(module.parameters())
    return curvature.build(step_problem(params, sum((p**2).sum() for p in params)))


def gauss_newton_dense(module: nn.Module, obs: Tensor, fisher: OutputFisher, *, layerwise: bool = True) -> Tensor:
    operator = built(GaussNewton.for_module(module, obs, fisher, layerwise=layerwise), module)
    with torch.no_grad():
        return operator.dense(DTYPE)


def assert_close(actual: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layerwise", [True, False], ids=["layerwise", "autograd"])
@settings(max_examples=8)
@given(case=masked_batches())
def test_masked_gauss_newton_equals_the_hessian_of_the_masked_kl(layerwise: bool, case: dict[str, object]) -> None:
    module, obs, mask = policy_and_batch(case)
    expected = dense_kl_hessian(module, obs, masked_kl(mask))
    assert_close(gauss_newton_dense(module, obs, CategoricalFisher(mask), layerwise=layerwise), expected)


@pytest.mark.parametrize("layerwise", [True, False], ids=["layerwise", "autograd"])
@settings(max_examples=8)
@given(case=masked_batches(SIZES))
def test_masked_multi_categorical_gauss_newton_equals_the_hessian_of_the_masked_kl(
    layerwise: bool, case: dict[str, object]
) -> None:
    module, obs, mask = policy_and_batch(case)
    expected = dense_kl_hessian(module, obs, masked_kl(mask, SIZES))
    actual = gauss_newton_dense(module, obs, MultiCategoricalFisher(SIZES, mask), layerwise=layerwise)
    assert_close(actual, expected)


@pytest.mark.parametrize("sizes", [None, SIZES], ids=["categorical", "multi_categorical"])
@settings(max_examples=10)
@given(data=st.data())
def test_the_square_root_of_a_masked_fisher_multiplies_out_to_it(
    sizes: Sequence[int] | None, data: st.DataObject
) -> None:
    case = data.draw(masked_batches(sizes))
    mask = case["mask"]
    logits = 3 * torch.randn(mask.shape, generator=torch.Generator().manual_seed(case["seed"]), dtype=DTYPE)
    fisher = CategoricalFisher(mask) if sizes is None else MultiCategoricalFisher(sizes, mask)
    columns = fisher.square_root(logits)  # (K, N, K)
    assert_close(torch.einsum("kni,knj->nij", columns, columns), dense_masked_fisher(logits, mask, sizes))


@pytest.mark.parametrize("sizes", [None, SIZES], ids=["categorical", "multi_categorical"])
@settings(max_examples=10)
@given(data=st.data())
def test_a_masked_fisher_is_zero_on_the_forbidden_entries(sizes: Sequence[int] | None, data: st.DataObject) -> None:
    case = data.draw(masked_batches(sizes))
    mask = case["mask"]
    generator = torch.Generator().manual_seed(case["seed"])
    logits, tangent = (torch.randn(mask.shape, generator=generator, dtype=DTYPE) for _ in range(2))
    fisher = CategoricalFisher(mask) if sizes is None else MultiCategoricalFisher(sizes, mask)
    product = fisher.bind(logits)(tangent)
    assert torch.all(product[~mask] == 0)
    assert torch.all(fisher.square_root(logits)[:, ~mask] == 0)
    moved = tangent.masked_fill(~mask, 1e3)  # the forbidden entries of u do not matter either
    assert torch.equal(fisher.bind(logits)(moved), product)
    expected = torch.einsum("nij,nj->ni", dense_masked_fisher(logits, mask, sizes), tangent)
    assert_close(product, expected)


def test_without_a_mask_the_categorical_fisher_is_unchanged() -> None:
    generator = torch.Generator().manual_seed(0)
    logits, tangent = (torch.randn(5, 4, generator=generator, dtype=DTYPE) for _ in range(2))
    probs = torch.softmax(logits, dim=-1) / 5  # the unmasked formula, written out
    unmasked = probs * (tangent - (probs * 5 * tangent).sum(-1, keepdim=True))
    assert torch.equal(CategoricalFisher().bind(logits)(tangent), unmasked)
    everything_allowed = torch.ones(5, 4, dtype=torch.bool)
    assert torch.equal(CategoricalFisher(everything_allowed).bind(logits)(tangent), unmasked)
    assert torch.equal(
        CategoricalFisher(everything_allowed).square_root(logits), CategoricalFisher().square_root(logits)
    )
    assert torch.equal(MultiCategoricalFisher([4]).bind(logits)(tangent), unmasked)


@pytest.mark.parametrize("layerwise", [True, False], ids=["layerwise", "autograd"])
def test_with_inputs_uses_the_fisher_it_is_given(layerwise: bool) -> None:
    mask = torch.tensor([[True, False, True], [False, True, False], [True, True, True], [False, True, True]])
    case = {"obs_dim": 2, "hidden": 3, "seed": 3, "mask": mask}
    module, obs, _ = policy_and_batch(case)
    other_obs = torch.randn(3, 2, generator=torch.Generator().manual_seed(4), dtype=DTYPE)
    other_mask = torch.tensor([[True, True, False], [False, False, True], [True, False, True]])
    first = GaussNewton.for_module(module, obs, CategoricalFisher(mask), layerwise=layerwise)
    moved = first.with_inputs(other_obs, fisher=CategoricalFisher(other_mask))
    on_other, on_first = built(moved, module), built(first, module)
    with torch.no_grad():
        on_other, on_first = on_other.dense(DTYPE), on_first.dense(DTYPE)
    assert_close(on_other, dense_kl_hessian(module, other_obs, masked_kl(other_mask)))
    assert_close(on_first, dense_kl_hessian(module, obs, masked_kl(mask)))  # the original keeps its own
    assert first.with_inputs(obs[:2]).fisher is first.fisher  # no fisher: this operator's
    with pytest.raises(TypeError, match="fisher must be an OutputFisher"):
        first.with_inputs(other_obs, fisher=KLHessian())  # type: ignore[arg-type]


def test_bad_masks_are_refused_in_one_line_naming_mask() -> None:
    logits = torch.zeros(2, 3, dtype=DTYPE)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 2\) but the logits have \(2, 3\)"):
        CategoricalFisher(torch.ones(2, 2, dtype=torch.bool)).bind(logits)
    with pytest.raises(ValueError, match=r"mask has shape \(3, 3\)"):
        CategoricalFisher(torch.ones(3, 3, dtype=torch.bool)).square_root(logits)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor.*mask\.bool\(\)"):
        CategoricalFisher(torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        CategoricalFisher([[True, True, True]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mask forbids every category of some row"):
        CategoricalFisher(torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match=r"mask forbids every category.*every factor's slice"):
        MultiCategoricalFisher([2, 1], torch.tensor([[True, False, False]]))
    with pytest.raises(ValueError, match=r"mask has 2 columns but sizes \[2, 1\] sum to 3"):
        MultiCategoricalFisher([2, 1], torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask has shape \(1, 3\)"):
        MultiCategoricalFisher([2, 1], torch.ones(1, 3, dtype=torch.bool)).bind(logits)
    mask = torch.ones(2, 3, dtype=torch.bool)
    fisher = CategoricalFisher(mask)
    mask[0] = False  # the mask was checked and copied at construction
    assert torch.isfinite(fisher.bind(logits)(logits + 1)).all()
    assert repr(CategoricalFisher()) == "CategoricalFisher()"
    assert repr(MultiCategoricalFisher([2, 1], torch.ones(4, 3, dtype=torch.bool))) == (
        "MultiCategoricalFisher([2, 1], mask=<bool tensor of shape (4, 3)>)"
    )


@pytest.mark.parametrize("sizes", [None, SIZES], ids=["categorical", "multi_categorical"])
@settings(max_examples=6)
@given(data=st.data())
def test_the_layerwise_diagonal_is_exact_under_a_mask_and_kfac_gets_its_factors(
    sizes: Sequence[int] | None, data: st.DataObject
) -> None:
    module, obs, mask = policy_and_batch(data.draw(masked_batches(sizes)))
    fisher = CategoricalFisher(mask) if sizes is None else MultiCategoricalFisher(sizes, mask)
    operator = built(GaussNewton.for_module(module, obs, fisher), module)
    with torch.no_grad():
        dense = operator.dense(DTYPE)
    exact = operator.exact_diagonal()
    assert exact is not None and operator.kronecker_factors() is not None
    torch.testing.assert_close(exact, dense.diagonal(), rtol=1e-10, atol=1e-14)
