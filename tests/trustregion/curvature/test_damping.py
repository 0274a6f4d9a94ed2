"""Damped: adds λI exactly, keeps the inner operator's properties, rejects bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trustregion_helpers import DTYPE, MLP, categorical_kl, random_vector, seeded, step_problem, symmetric_matrix

from trustregion import ConjugateGradient, Curvature, Damped, KLHessian, LinearOperator, StepProblem

seeds = st.integers(0, 2**31 - 1)


class MatrixCurvature(Curvature):
    """A fixed symmetric matrix as a curvature (the identity of what Damped wraps)."""

    def __init__(self, matrix: torch.Tensor, *, positive_semidefinite: bool) -> None:
        self.matrix = matrix
        self.positive_semidefinite = positive_semidefinite
        self.needs_loss_graph = not positive_semidefinite

    def build(self, problem: StepProblem) -> LinearOperator:
        return LinearOperator(
            lambda v: self.matrix @ v, self.matrix.shape[0], positive_semidefinite=self.positive_semidefinite
        )


def any_problem(n: int) -> StepProblem:
    theta = torch.nn.Parameter(torch.zeros(n, dtype=DTYPE))
    return step_problem([theta], theta.sum())


@given(n=st.integers(1, 20), damping=st.floats(0.0, 10.0), seed=seeds, psd=st.booleans())
def test_damped_adds_lambda_times_identity_exactly(n: int, damping: float, seed: int, psd: bool) -> None:
    generator = torch.Generator().manual_seed(seed)
    eigenvalues = torch.randn(n, generator=generator, dtype=DTYPE)
    matrix = symmetric_matrix(eigenvalues.abs() if psd else eigenvalues, generator)
    inner = MatrixCurvature(matrix, positive_semidefinite=psd)
    damped = Damped(inner, damping)
    operator = damped.build(any_problem(n))

    assert torch.equal(operator.dense(DTYPE), matrix + damping * torch.eye(n, dtype=DTYPE))
    vector = random_vector(n, generator)
    expected = matrix @ vector + damping * vector  # rounding may differ by an ulp (fused multiply-add)
    assert torch.allclose(operator(vector), expected, rtol=4e-16, atol=4e-16 * expected.abs().max().item())
    assert operator.positive_semidefinite is psd
    assert damped.needs_loss_graph is inner.needs_loss_graph


@settings(max_examples=5)
@given(seed=seeds, damping=st.floats(0.0, 1.0))
def test_damped_kl_hessian_adds_lambda_times_identity(seed: int, damping: float) -> None:
    module = seeded(lambda: MLP(3, 3, 3), seed)
    obs = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    params = list(module.parameters())
    old_logits = module(obs).detach()
    kl = categorical_kl(old_logits, module(obs))
    problem = step_problem(params, kl, kl)
    plain = KLHessian().build(problem).dense(DTYPE)
    damped = Damped(KLHessian(), damping).build(problem).dense(DTYPE)
    assert torch.equal(damped, plain + damping * torch.eye(plain.shape[0], dtype=DTYPE))


def test_damped_default_is_the_trpo_damping() -> None:
    assert Damped(KLHessian()).damping == 0.1


@pytest.mark.parametrize("damping", [-0.1, -1, math.nan, math.inf, "0.1", None])
def test_damped_rejects_bad_damping(damping: object) -> None:
    with pytest.raises(ValueError, match="damping must be a finite number >= 0"):
        Damped(KLHessian(), damping)  # type: ignore[arg-type]


@pytest.mark.parametrize("curvature", [KLHessian, ConjugateGradient(), lambda v: v, None])
def test_damped_rejects_what_is_not_a_curvature(curvature: object) -> None:
    with pytest.raises(TypeError, match="curvature must be a Curvature"):
        Damped(curvature, 0.1)  # type: ignore[arg-type]
