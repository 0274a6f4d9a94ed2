"""Jacobi and K-FAC preconditioners, the structure operators carry for them, and preconditioned CG / Steihaug.

References: the dense float64 operator (its diagonal, the Kronecker blocks assembled with ``torch.kron``),
dense solves, and the properties preconditioned CG must keep (the ``P``-norm ball, monotone model decrease).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from trustregion_helpers import (
    DTYPE,
    GaussianMLP,
    matrix_operator,
    quadratic_model,
    random_vector,
    seeded,
    snapshot,
    symmetric_matrix,
)

from trustregion import (
    KFAC,
    BernoulliFisher,
    CategoricalFisher,
    ConjugateGradient,
    Damped,
    DiagonalGaussianFisher,
    GaussNewton,
    Hessian,
    Jacobi,
    LinearOperator,
    MultiCategoricalFisher,
    SquaredError,
    SteihaugCG,
    TrustRadius,
    TrustRegionMinimizer,
)
from trustregion.curvature.base import StepProblem
from trustregion.result import SolverReason
from trustregion.solvers import Ball

seeds = st.integers(0, 2**31 - 1)
OUTPUT_KINDS = ["categorical", "bernoulli", "multicategorical", "squared", "gaussian_shared", "gaussian_batched"]


class DeepMLP(nn.Module):
    """Two hidden layers (tanh, relu), to exercise backpropagation through several layers."""

    def __init__(self, obs_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class TwoHeads(nn.Module):
    """A Gaussian policy with a state-dependent log-std head (both heads linear: the layer-wise path)."""

    def __init__(self, obs_dim: int, hidden: int, act_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(obs_dim, hidden)
        self.mean = nn.Linear(hidden, act_dim)
        self.log_std = nn.Linear(hidden, act_dim)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.tanh(self.hidden(obs))
        return self.mean(features), self.log_std(features)


class GaussianPolicy(nn.Module):
    """The usual MuJoCo policy: two tanh layers, a mean head and a state-independent log-std."""

    def __init__(self, obs_dim: int, hidden: int, act_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, act_dim)
        )
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(obs), self.log_std


def model_and_fisher(kind: str, seed: int, obs_dim: int = 3, hidden: int = 5):
    if kind == "gaussian_shared":
        return seeded(lambda: GaussianMLP(obs_dim, hidden, 2, (2,)), seed), DiagonalGaussianFisher()
    if kind == "gaussian_batched":
        return seeded(lambda: TwoHeads(obs_dim, hidden, 2), seed), DiagonalGaussianFisher()
    fisher = {
        "categorical": CategoricalFisher(),
        "bernoulli": BernoulliFisher(),
        "multicategorical": MultiCategoricalFisher([1, 2]),
        "squared": SquaredError(0.7),
    }[kind]
    return seeded(lambda: DeepMLP(obs_dim, hidden, 3), seed), fisher


def built(module: nn.Module, obs: torch.Tensor, fisher, damping: float = 0.0) -> LinearOperator:
    curvature = GaussNewton.for_module(module, obs, fisher)
    params = list(module.parameters())
    problem = StepProblem(params, torch.zeros((), dtype=DTYPE), None, [torch.zeros_like(p) for p in params], None)
    operator = curvature.build(problem)
    return operator.shifted(damping)


def observations(seed: int, rows: int = 6, obs_dim: int = 3) -> torch.Tensor:
    return torch.randn(rows, obs_dim, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


@settings(max_examples=25, deadline=None)
@given(seed=seeds, kind=st.sampled_from(OUTPUT_KINDS))
def test_exact_diagonal_equals_the_dense_gauss_newton_diagonal(seed: int, kind: str) -> None:
    module, fisher = model_and_fisher(kind, seed % 1000)
    operator = built(module, observations(seed), fisher)
    exact = operator.exact_diagonal()
    dense = operator.dense(DTYPE).diagonal()
    assert exact is not None
    torch.testing.assert_close(exact, dense, rtol=1e-10, atol=1e-14)


def test_the_autograd_path_knows_no_diagonal_and_jacobi_estimates_it() -> None:
    """``0.3 * head(x)`` is outside the layer-wise path: Hutchinson's estimate, unbiased, from products."""
    module = seeded(lambda: GaussianMLP(3, 5, 2, None), 0)
    operator = built(module, observations(0), DiagonalGaussianFisher(), damping=0.1)
    assert operator.exact_diagonal() is None and operator.kronecker_factors() is None
    estimate = operator.diagonal(torch.zeros(0, dtype=DTYPE), probes=4000, exact_up_to=0)
    torch.testing.assert_close(estimate, operator.dense(DTYPE).diagonal(), rtol=0.1, atol=0.02)


def test_a_shift_and_a_linear_map_carry_the_structure() -> None:
    module, fisher = model_and_fisher("categorical", 0)
    operator = built(module, observations(0), fisher)
    diagonal = operator.exact_diagonal()
    shift = torch.linspace(0.1, 0.5, operator.dim, dtype=DTYPE)
    torch.testing.assert_close(operator.shifted(shift).exact_diagonal(), diagonal + shift)
    tripled = operator.map(lambda v: 3 * v)
    torch.testing.assert_close(tripled.exact_diagonal(), 3 * diagonal)
    for original, mapped in zip(operator.kronecker_factors().layers, tripled.kronecker_factors().layers, strict=True):
        torch.testing.assert_close(mapped.output_factor, 3 * original.output_factor)


class Tied(nn.Module):
    """One weight used twice: per-input Jacobian squares no longer give the diagonal."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 3)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.layer(torch.tanh(self.layer(obs)))


def test_a_tied_weight_has_no_exact_diagonal_and_jacobi_falls_back_to_products() -> None:
    module = seeded(Tied, 0)
    operator = built(module, observations(1), CategoricalFisher(), damping=0.1)
    assert operator.exact_diagonal() is None
    apply = Jacobi(probes=operator.dim).build(operator, torch.zeros(operator.dim, dtype=DTYPE))
    residual = random_vector(operator.dim, torch.Generator().manual_seed(2))
    torch.testing.assert_close(apply(residual), residual / operator.dense(DTYPE).diagonal())


def test_jacobi_divides_by_the_shifted_diagonal() -> None:
    module, fisher = model_and_fisher("gaussian_shared", 3)
    operator = built(module, observations(3), fisher)
    shift = torch.linspace(0.1, 1.0, operator.dim, dtype=DTYPE)
    shifted = operator.shifted(shift)
    apply = Jacobi().build(shifted, shift)
    residual = random_vector(operator.dim, torch.Generator().manual_seed(4))
    before = shifted.products
    torch.testing.assert_close(apply(residual), residual / shifted.dense(DTYPE).diagonal())
    assert before == 0  # the layer-wise diagonal needs no curvature product


def dense_kfac(operator: LinearOperator, shift: float) -> torch.Tensor:
    """``P`` assembled entry by entry: ``kron(G, Ā) + μI`` on each layer's ``[W, b]``, ``diag(A) + μ`` elsewhere."""
    factors = operator.kronecker_factors()
    matrix = torch.diag(factors.diagonal + shift)
    for layer in factors.layers:
        out_size = layer.output_factor.shape[0]
        weight = torch.arange(layer.weight.start, layer.weight.stop).view(out_size, -1)
        if layer.bias is not None:
            bias = torch.arange(layer.bias.start, layer.bias.stop).unsqueeze(1)
            weight = torch.cat([weight, bias], dim=1)
        index = weight.reshape(-1)
        block = torch.kron(layer.output_factor, layer.input_factor)
        matrix[index.unsqueeze(1), index.unsqueeze(0)] = block + shift * torch.eye(len(index), dtype=DTYPE)
    return matrix


@settings(max_examples=20, deadline=None)
@given(seed=seeds, kind=st.sampled_from(OUTPUT_KINDS))
def test_kfac_applies_the_inverse_of_its_kronecker_blocks(seed: int, kind: str) -> None:
    module, fisher = model_and_fisher(kind, seed % 1000)
    operator = built(module, observations(seed), fisher, damping=0.1)
    apply = KFAC().build(operator, torch.zeros(operator.dim, dtype=DTYPE))
    residual = random_vector(operator.dim, torch.Generator().manual_seed(seed))
    expected = torch.linalg.solve(dense_kfac(operator, 0.1), residual)
    torch.testing.assert_close(apply(residual), expected, rtol=1e-9, atol=1e-12)


def test_kfac_is_exact_for_one_layer_and_one_input() -> None:
    """With one input row the layer's block is exactly ``G ⊗ x̄x̄ᵀ``: PCG converges in one iteration."""
    module = seeded(lambda: nn.Linear(4, 3), 0)
    operator = built(module, observations(5, rows=1, obs_dim=4), CategoricalFisher(), damping=0.05)
    rhs = random_vector(operator.dim, torch.Generator().manual_seed(6))
    result = ConjugateGradient(max_iter=1, tol=0.0, preconditioner=KFAC())(operator, rhs)
    assert result.relative_residual < 1e-10


@pytest.mark.parametrize("preconditioner", [Jacobi(), KFAC()])
def test_preconditioned_cg_reaches_the_dense_natural_gradient(preconditioner) -> None:
    module, fisher = model_and_fisher("gaussian_shared", 7)
    operator = built(module, observations(7, rows=12), fisher, damping=1e-3)
    rhs = random_vector(operator.dim, torch.Generator().manual_seed(8))
    result = ConjugateGradient(max_iter=10 * operator.dim, tol=1e-12, preconditioner=preconditioner)(operator, rhs)
    expected = torch.linalg.solve(operator.dense(DTYPE), rhs)
    torch.testing.assert_close(result.direction, expected, rtol=1e-7, atol=1e-9)


def test_preconditioning_cuts_the_iterations_of_a_badly_scaled_regression() -> None:
    """Features on scales 1e-2 to 1e2: Jacobi equilibrates, and K-FAC is exact for one linear layer
    under a squared error (``Σ_i I ⊗ x_i x_iᵀ = G ⊗ Ā``), so it converges at once."""
    module = seeded(lambda: nn.Linear(20, 2), 9)
    obs = observations(9, rows=100, obs_dim=20) * torch.logspace(-2, 2, 20, dtype=DTYPE)
    operator = built(module, obs, SquaredError(1 / 100), damping=1e-8)
    rhs = random_vector(operator.dim, torch.Generator().manual_seed(10))
    iterations = {}
    for name, preconditioner in [("none", None), ("jacobi", Jacobi()), ("kfac", KFAC())]:
        result = ConjugateGradient(max_iter=500, tol=1e-8, preconditioner=preconditioner)(operator, rhs)
        assert result.reason is SolverReason.CONVERGED, name
        iterations[name] = result.iterations
    assert 2 * iterations["jacobi"] <= iterations["none"], iterations
    assert iterations["kfac"] <= 3, iterations


def test_kfac_improves_a_truncated_natural_gradient_solve() -> None:
    """TRPO's use: after a few CG iterations the K-FAC-preconditioned step is closer to the exact one in the
    ``A``-norm (the norm CG minimises the error in) than the plain step, on a policy with badly scaled inputs."""
    module = seeded(lambda: GaussianPolicy(6, 16, 3), 13)
    obs = observations(13, rows=400, obs_dim=6) * torch.logspace(-1, 1, 6, dtype=DTYPE)
    operator = built(module, obs, DiagonalGaussianFisher(), damping=1e-2)
    matrix = operator.dense(DTYPE)
    rhs = matrix @ random_vector(operator.dim, torch.Generator().manual_seed(14))
    exact = torch.linalg.solve(matrix, rhs)

    def error(preconditioner) -> float:
        step = ConjugateGradient(max_iter=5, tol=0.0, preconditioner=preconditioner)(operator, rhs).direction
        return ((step - exact) @ matrix @ (step - exact)).sqrt().item()

    assert error(KFAC()) <= 0.5 * error(None)


def random_problem(seed: int, n: int, indefinite: bool):
    generator = torch.Generator().manual_seed(seed)
    eigenvalues = 0.1 + 10 * torch.rand(n, generator=generator, dtype=DTYPE)
    if indefinite:
        eigenvalues[0] = -1.0
    matrix = symmetric_matrix(eigenvalues, generator)
    scale = torch.exp(2 * torch.randn(n, generator=generator, dtype=DTYPE))  # P = diag(scale)
    return matrix, random_vector(n, generator), scale


@settings(max_examples=50, deadline=None)
@given(seed=seeds, n=st.integers(1, 8), log_radius=st.floats(-2.0, 2.0), indefinite=st.booleans())
def test_preconditioned_steihaug_stays_in_the_preconditioner_ball_and_beats_its_cauchy_point(
    seed: int, n: int, log_radius: float, indefinite: bool
) -> None:
    matrix, rhs, scale = random_problem(seed, n, indefinite)
    radius = 10.0**log_radius
    solver = SteihaugCG(max_iter=4 * n, tol=1e-12, preconditioner=lambda r: r / scale)
    result = solver.solve_in_region(matrix_operator(matrix, positive_semidefinite=False), rhs, Ball(radius))
    step = result.direction
    p_norm = math.sqrt((step * scale * step).sum().item())
    assert p_norm <= radius * (1 + 1e-9)
    assert result.region_norm == pytest.approx(p_norm, rel=1e-8, abs=1e-12)
    cauchy_direction = rhs / scale  # the first preconditioned direction
    curvature = (cauchy_direction @ matrix @ cauchy_direction).item()
    length = radius / math.sqrt((cauchy_direction * scale * cauchy_direction).sum().item())
    if curvature > 0:
        length = min(length, (rhs @ cauchy_direction).item() / curvature)
    cauchy = quadratic_model(matrix, rhs, length * cauchy_direction)
    assert quadratic_model(matrix, rhs, step) <= cauchy + 1e-9 * max(1.0, abs(cauchy))


@settings(max_examples=30, deadline=None)
@given(seed=seeds, n=st.integers(1, 8))
def test_preconditioned_steihaug_inside_a_large_ball_solves_the_system(seed: int, n: int) -> None:
    matrix, rhs, scale = random_problem(seed, n, indefinite=False)
    solver = SteihaugCG(max_iter=10 * n, tol=1e-13, preconditioner=lambda r: r / scale)
    result = solver.solve_in_region(matrix_operator(matrix), rhs, Ball(1e12))
    torch.testing.assert_close(result.direction, torch.linalg.solve(matrix, rhs), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("solver_type", [ConjugateGradient, SteihaugCG])
def test_an_indefinite_preconditioner_stops_the_solve_with_its_own_reason(solver_type) -> None:
    operator = matrix_operator(torch.eye(3, dtype=DTYPE))
    result = solver_type(max_iter=5, preconditioner=lambda r: -r)(operator, torch.ones(3, dtype=DTYPE))
    assert result.reason is SolverReason.INDEFINITE_PRECONDITIONER
    assert operator.products == 0 and torch.equal(result.direction, torch.zeros(3, dtype=DTYPE))


@pytest.mark.parametrize("solver_type", [ConjugateGradient, SteihaugCG])
def test_a_preconditioner_of_the_wrong_size_is_refused_in_one_line(solver_type) -> None:
    solver = solver_type(max_iter=5, preconditioner=lambda r: r[:-1])
    with pytest.raises(ValueError, match=r"preconditioner returned \(2,\) for a residual of shape \(3,\)"):
        solver(matrix_operator(torch.eye(3, dtype=DTYPE)), torch.ones(3, dtype=DTYPE))


def test_a_preconditioner_that_is_not_one_is_refused() -> None:
    with pytest.raises(TypeError, match="preconditioner must be a Preconditioner"):
        ConjugateGradient(preconditioner="jacobi")
    with pytest.raises(ValueError, match="floor must be > 0"):
        Jacobi(floor=0.0)


def test_kfac_without_kronecker_factors_says_what_to_use() -> None:
    weight = torch.randn(3, dtype=DTYPE, requires_grad=True)
    optimizer = TrustRegionMinimizer(
        [weight], curvature=Hessian(), solver=SteihaugCG(max_iter=5, preconditioner=KFAC())
    )
    before = snapshot([weight])
    with pytest.raises(ValueError, match="KFAC\\(\\) needs a curvature that knows its Kronecker factors"):
        optimizer.step(lambda: (weight**4).sum() + weight.sum())
    assert torch.equal(weight, before[0])


def test_kfac_on_a_model_without_linear_layers_says_so() -> None:
    class OnlyScale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.log_std = nn.Parameter(torch.zeros(2, dtype=DTYPE))

        def forward(self, obs: torch.Tensor):
            return obs, self.log_std

    module = OnlyScale()
    operator = built(module, observations(0, obs_dim=2), DiagonalGaussianFisher(), damping=0.1)
    with pytest.raises(ValueError, match="found no linear layer"):
        KFAC().build(operator, torch.zeros(operator.dim, dtype=DTYPE))


def test_a_damped_curvature_passes_its_damping_to_kfac() -> None:
    module, fisher = model_and_fisher("categorical", 11)
    obs = observations(11)
    params = list(module.parameters())
    problem = StepProblem(params, torch.zeros((), dtype=DTYPE), None, [torch.zeros_like(p) for p in params], None)
    operator = Damped(GaussNewton.for_module(module, obs, fisher), 0.25).build(problem)
    assert operator.shift == 0.25
    apply = KFAC().build(operator, torch.zeros(operator.dim, dtype=DTYPE))
    residual = random_vector(operator.dim, torch.Generator().manual_seed(12))
    torch.testing.assert_close(apply(residual), torch.linalg.solve(dense_kfac(operator, 0.25), residual))


def test_a_preconditioned_minimizer_step_is_measured_in_the_preconditioner_norm() -> None:
    """``P = H`` on a badly scaled quadratic: the Newton step lies inside ``‖s‖_P <= Δ`` but far outside the
    Euclidean ball, so it is taken whole (the minimum in one step), and ``step_norm`` is its ``P``-norm."""
    curvatures = torch.tensor([100.0, 1.0, 0.01], dtype=DTYPE)
    newton = torch.tensor([0.01, 1.0, 50.0], dtype=DTYPE)
    point = torch.zeros(3, dtype=DTYPE, requires_grad=True)
    solver = SteihaugCG(max_iter=10, tol=1e-12, preconditioner=lambda r: r / curvatures)
    optimizer = TrustRegionMinimizer([point], solver=solver, control=TrustRadius(initial_radius=10.0))
    optimizer.step(lambda: 0.5 * (curvatures * (point - newton) ** 2).sum())
    result = optimizer.last_result
    assert result.accepted
    torch.testing.assert_close(point.detach(), newton, rtol=1e-10, atol=1e-12)
    p_norm = (newton * curvatures * newton).sum().sqrt().item()
    assert result.step_norm == pytest.approx(p_norm, rel=1e-10)


@pytest.mark.parametrize("solver_type", [ConjugateGradient, SteihaugCG])
def test_a_preconditioner_indefinite_off_the_first_residual_stops_the_solve_at_the_last_iterate(solver_type) -> None:
    """``P⁻¹ = diag(1, -1)`` is positive on ``g = e_1`` but not on the next residual: the first iterate is kept."""
    matrix = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=DTYPE)
    signs = torch.tensor([1.0, -1.0], dtype=DTYPE)
    rhs = torch.tensor([1.0, 0.0], dtype=DTYPE)
    result = solver_type(max_iter=5, tol=0.0, preconditioner=lambda r: r * signs)(matrix_operator(matrix), rhs)
    assert result.reason is SolverReason.INDEFINITE_PRECONDITIONER and result.iterations == 1
    torch.testing.assert_close(result.direction, torch.tensor([0.5, 0.0], dtype=DTYPE))
