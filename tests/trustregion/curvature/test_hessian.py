"""Hessian: forward-over-reverse and double-backward products equal the dense Hessian of the loss."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from trustregion_helpers import DTYPE, MLP, flat_functional, random_vector, seeded, step_problem

from trustregion import Damped, Hessian, LinearOperator

seeds = st.integers(0, 2**31 - 1)

# torch.func.jvp scripts its forward-mode decompositions on first use, and torch warns that scripting is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def worked_example(theta: Tensor) -> Tensor:
    """``f(θ) = θ1² + 3θ1θ2 + 2θ2²``."""
    return theta[0] ** 2 + 3 * theta[0] * theta[1] + 2 * theta[1] ** 2


def build(curvature: Hessian, params: list[Tensor], loss: Tensor) -> LinearOperator:
    return curvature.build(step_problem(params, loss, create_graph=curvature.needs_loss_graph))


@pytest.mark.parametrize("mode", ["forward_over_reverse", "double_backward"])
def test_hessian_of_the_worked_example(mode: str) -> None:
    theta = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=DTYPE))
    loss = worked_example(theta)
    curvature = Hessian(worked_example) if mode == "forward_over_reverse" else Hessian()
    problem = step_problem([theta], loss, create_graph=curvature.needs_loss_graph)

    assert loss.item() == 15.0
    assert torch.equal(problem.loss_gradient[0].detach(), torch.tensor([8.0, 11.0], dtype=DTYPE))
    operator = curvature.build(problem)
    with torch.no_grad():
        dense = operator.dense(DTYPE)
    assert torch.equal(dense, torch.tensor([[2.0, 3.0], [3.0, 4.0]], dtype=DTYPE))
    eigenvalues = torch.linalg.eigvalsh(dense)
    assert eigenvalues[0].item() < 0.0 < eigenvalues[1].item()  # det = -1: indefinite
    assert not operator.positive_semidefinite


def regression_setup(seed: int, batch: int, hidden: int):
    module = seeded(lambda: MLP(2, hidden, 1), seed)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch, 2, generator=generator, dtype=DTYPE)
    targets = torch.randn(batch, 1, generator=generator, dtype=DTYPE)
    names = [name for name, _ in module.named_parameters()]

    def loss_of(*params: Tensor) -> Tensor:
        prediction = torch.func.functional_call(module, dict(zip(names, params, strict=True)), (inputs,))
        return ((prediction - targets) ** 2).mean()

    theta0, at = flat_functional(module)
    dense = torch.autograd.functional.hessian(lambda theta: ((at(theta)(inputs) - targets) ** 2).mean(), theta0)
    return module, loss_of, dense


@settings(max_examples=10)
@given(seed=seeds, batch=st.integers(1, 8), hidden=st.integers(1, 5), mode=st.sampled_from(["function", "graph"]))
def test_hessian_operator_equals_the_dense_hessian(seed: int, batch: int, hidden: int, mode: str) -> None:
    module, loss_of, expected = regression_setup(seed, batch, hidden)
    params = list(module.parameters())
    curvature = Hessian(loss_of) if mode == "function" else Hessian()
    operator = build(curvature, params, loss_of(*params))
    with torch.no_grad():
        dense = operator.dense(DTYPE)
        generator = torch.Generator().manual_seed(seed)
        u, v = random_vector(operator.dim, generator), random_vector(operator.dim, generator)
        assert (u @ operator(v)).item() == pytest.approx((v @ operator(u)).item(), rel=1e-10, abs=1e-13)
    assert torch.allclose(dense, expected, rtol=1e-9, atol=1e-11)


class CubeWithoutForwardMode(torch.autograd.Function):
    """``x³`` as an old-style autograd.Function: no forward-mode rule, so ``torch.func.jvp`` fails."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * 3 * x**2


def test_hessian_falls_back_to_double_backward_without_forward_mode() -> None:
    def loss_of(theta: Tensor) -> Tensor:
        return CubeWithoutForwardMode.apply(theta).sum() + theta[0] * theta[1]

    theta = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE))
    operator = build(Hessian(loss_of), [theta], loss_of(theta))
    with torch.no_grad():
        dense = operator.dense(DTYPE)
    expected = torch.diag(6 * theta.detach()) + torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=DTYPE)
    assert torch.allclose(dense, expected, rtol=1e-12, atol=0.0)


def test_hessian_of_a_linear_loss_is_zero() -> None:
    theta = torch.nn.Parameter(torch.ones(3, dtype=DTYPE))
    operator = build(Hessian(), [theta], (torch.arange(3, dtype=DTYPE) * theta).sum())
    assert torch.equal(operator.dense(DTYPE), torch.zeros(3, 3, dtype=DTYPE))


def test_hessian_declares_whether_it_needs_the_loss_graph() -> None:
    assert Hessian().needs_loss_graph
    assert not Hessian(worked_example).needs_loss_graph
    assert Damped(Hessian(), 0.1).needs_loss_graph
    assert not Damped(Hessian(worked_example), 0.1).needs_loss_graph


def test_hessian_rejects_a_non_callable_function() -> None:
    with pytest.raises(TypeError, match="function must be callable"):
        Hessian(function=3.0)  # type: ignore[arg-type]
