"""ResidualGaussNewton's matrix from the Jacobian: equal to the matrix from products, and kept across a refused step."""

from __future__ import annotations

import copy
import pickle

import torch
from hypothesis import given
from hypothesis import strategies as st
from trustregion_helpers import DTYPE, step_problem

from trustregion import DenseSolver, Reason, ResidualGaussNewton, TrustRadius, TrustRegionMinimizer
from trustregion.curvature.least_squares import JacobianGaussNewton
from trustregion.operator import LinearOperator

seeds = st.integers(0, 2**31 - 1)


def network_residuals(seed: int, samples: int, hidden: int):
    """``r(W, b, v) = v·tanh(W x + b) - y`` on random data (a tiny tanh network), and random parameters."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, 2, generator=generator, dtype=DTYPE)
    targets = torch.randn(samples, generator=generator, dtype=DTYPE)

    def residuals(weight: torch.Tensor, bias: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        return torch.tanh(inputs @ weight.T + bias) @ head - targets

    shapes = [(hidden, 2), (hidden,), (hidden,)]
    params = [torch.randn(shape, generator=generator, dtype=DTYPE).requires_grad_() for shape in shapes]
    return residuals, params


def from_products(operator: LinearOperator) -> torch.Tensor:
    """The matrix one product per column: the base class's way, bypassing the Jacobian."""
    return LinearOperator.dense(operator, DTYPE)


@given(seeds, st.integers(1, 40), st.integers(1, 6), st.sampled_from([1.0, 0.25]), st.booleans())
def test_matrix_from_jacobian_equals_matrix_from_products(
    seed: int, samples: int, hidden: int, scale: float, vector_shift: bool
) -> None:
    """By columns (m >= n) or by rows (m < n), mapped and shifted as the minimizer does, to float64 rounding."""
    residuals, params = network_residuals(seed, samples, hidden)
    curvature = ResidualGaussNewton(residuals, scale)
    operator = curvature.build(step_problem(params, curvature.loss(*params)))
    assert isinstance(operator, JacobianGaussNewton)
    shift = torch.rand(operator.dim, dtype=DTYPE) if vector_shift else 0.5
    shifted = operator.map(lambda t: 3.0 * t).shifted(shift)
    expected = from_products(shifted)
    size = expected.abs().max()
    torch.testing.assert_close(shifted.dense(DTYPE), expected, rtol=0, atol=1e-13 * size)
    torch.testing.assert_close(shifted.exact_diagonal(), expected.diagonal(), rtol=0, atol=1e-13 * size)


def test_forming_counts_min_of_rows_and_columns_once() -> None:
    """``J`` costs min(m, n) passes, counted once on the operator the minimizer reads, not on its shifted copies."""
    residuals, params = network_residuals(0, samples=5, hidden=4)  # m = 5 rows, n = 16 columns
    curvature = ResidualGaussNewton(residuals)
    mapped = curvature.build(step_problem(params, curvature.loss(*params))).map(lambda t: t)
    shifted = mapped.shifted(1e-3)
    shifted.dense(DTYPE)
    shifted.shifted(2e-3).dense(DTYPE)
    mapped.exact_diagonal()
    assert mapped.products == 5


def test_refused_step_reuses_the_jacobian() -> None:
    """After a refused step the parameters are as before: the next step forms no matrix, so counts no products."""
    x = torch.tensor([-1.2, 1.0], dtype=DTYPE, requires_grad=True)
    fit = ResidualGaussNewton(lambda z: torch.stack([10 * (z[1] - z[0] ** 2), 1 - z[0]]))  # Rosenbrock
    opt = TrustRegionMinimizer([x], curvature=fit, solver=DenseSolver(), control=TrustRadius(initial_radius=1e3))
    closure = fit.closure([x])
    results = []
    for _ in range(30):
        opt.step(closure)
        results.append(opt.last_result)
    refused = [i for i, r in enumerate(results[:-1]) if r.reason is Reason.INSUFFICIENT_DECREASE]
    assert refused, "the Gauss-Newton step from (-1.2, 1) overshoots the radius-1000 region at least once"
    for i in refused:
        previous_point_was_new = i == 0 or results[i - 1].accepted
        assert results[i].curvature_products == (2 if previous_point_was_new else 0)
        assert results[i + 1].curvature_products == 0


def test_moved_parameters_form_the_jacobian_again() -> None:
    residuals, params = network_residuals(1, samples=12, hidden=3)
    curvature = ResidualGaussNewton(residuals)
    first = curvature.build(step_problem(params, curvature.loss(*params)))
    first.dense(DTYPE)
    with torch.no_grad():
        params[0].add_(0.1)
    second = curvature.build(step_problem(params, curvature.loss(*params)))
    torch.testing.assert_close(second.dense(DTYPE), from_products(second), rtol=1e-12, atol=1e-13)
    assert second.products > 0


def test_copies_and_pickles_after_a_build() -> None:
    _, params = network_residuals(2, samples=6, hidden=2)
    curvature = ResidualGaussNewton(_module_level_residuals)
    curvature.build(step_problem(params[:1], curvature.loss(*params[:1])))
    copy.deepcopy(curvature)
    restored = pickle.loads(pickle.dumps(curvature))
    assert restored.scale == curvature.scale


def _module_level_residuals(weight: torch.Tensor) -> torch.Tensor:
    return weight.sum(1) ** 2 - 1.0
