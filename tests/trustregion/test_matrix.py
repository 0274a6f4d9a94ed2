"""The matrix: every curvature × every solver × every step control that makes sense together (float64).

Modelled on optimistix's test matrix: each curvature operator is first checked against its closed form
(a dense matrix written out by hand, or ``JᵀMJ`` from :func:`torch.autograd.functional.jacobian`), then
every valid pairing is run through both optimizers and checked against dense references:

* :class:`~trustregion.TrustRegionOptimizer` (line searches ``BacktrackingLineSearch`` and
  ``NoLineSearch``): the first step is ``t · β A⁻¹g`` with ``β = sqrt(2δ / gᵀA⁻¹g)`` and ``t`` the
  fraction the line search took, and its quadratic KL ``½ ΔθᵀAΔθ`` stays within ``δ``;
* :class:`~trustregion.TrustRegionMinimizer` (controls ``TrustRadius`` in both metrics and
  ``LevenbergMarquardt``): on a convex problem it converges to the dense minimiser, every accepted
  step decreases the loss, and each reported prediction is the dense model's ``gᵀs - ½ sᵀAs``;
* pairings that cannot work (an indefinite ``Hessian`` with a region measured by the operator, or
  with Levenberg-Marquardt's unbounded step) raise the documented ``ValueError``.

Then the pieces the matrix runs on: the solvers' stopping rules and the radius controls' update rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.distributions import Categorical, Normal
from trustregion_helpers import (
    DTYPE,
    MLP,
    GaussianMLP,
    categorical_kl,
    flat_functional,
    gaussian_kl,
    log_spaced_eigenvalues,
    random_vector,
    seeded,
    symmetric_matrix,
)

from trustregion import (
    BacktrackingLineSearch,
    CategoricalFisher,
    ConjugateGradient,
    Curvature,
    Damped,
    DenseSolver,
    DiagonalGaussianFisher,
    GaussNewton,
    Hessian,
    KLHessian,
    LevenbergMarquardt,
    LinearOperator,
    NoLineSearch,
    Reason,
    ResidualGaussNewton,
    SquaredError,
    SteihaugCG,
    StepProblem,
    TrustRadius,
    TrustRegionMinimizer,
    TrustRegionOptimizer,
)
from trustregion.control import DampingState, TrustRadiusState
from trustregion.control.base import improvement_ratio
from trustregion.result import SolverReason

EPS = torch.finfo(DTYPE).eps
EXAMPLES = max(5, settings().max_examples // 2)  # follows the hypothesis profile (tests/conftest.py)


def flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def leaf(tensor: Tensor) -> Tensor:
    return tensor.detach().clone().to(DTYPE).requires_grad_()


def build(curvature: Curvature, params: list[Tensor], closure: Callable[[], object]) -> LinearOperator:
    """The operator ``curvature`` builds at the current parameters, as the optimizers call it."""
    output = closure()
    loss, constraint = output if isinstance(output, tuple) else (output, None)
    grads = torch.autograd.grad(loss, params, retain_graph=True, create_graph=curvature.needs_loss_graph)
    return curvature.build(StepProblem(params, loss, constraint, list(grads), closure))


def negative_gradient(params: list[Tensor], closure: Callable[[], object]) -> Tensor:
    output = closure()
    loss = output[0] if isinstance(output, tuple) else output
    return -flat(list(torch.autograd.grad(loss, params)))


def block_jacobian(x: Tensor, outputs: int) -> Tensor:
    """``∂z/∂(W, b)`` of ``z = W x + b`` for one input: ``[I ⊗ xᵀ, I]`` (``W`` flattened row by row)."""
    eye = torch.eye(outputs, dtype=DTYPE)
    return torch.cat([torch.kron(eye, x[None, :]), eye], dim=1)


def categorical_output_fisher(probs: Tensor) -> Tensor:
    return torch.diag(probs) - torch.outer(probs, probs)


# ============================================================================= problems with closed forms


@dataclass
class Problem:
    """Parameters, a closure, the curvature under test and dense references at the current parameters.

    ``matrix()`` is ``A`` (closed form or ``JᵀMJ`` by jacobian), ``minimiser`` the dense reference
    for the minimizer (``None`` for TRPO-style problems, which have no minimum).
    """

    params: list[Tensor]
    closure: Callable[[], object]
    curvature: Curvature
    matrix: Callable[[], Tensor]
    positive_semidefinite: bool = True
    minimiser: Tensor | None = None
    extra: dict = field(default_factory=dict)


def linear_gaussian_policy(seed: int, curvature: str = "kl", batch: int = 24, obs_dim: int = 3, act_dim: int = 2):
    """Mean ``W x + b``, state-independent log-std; TRPO closure ``(surrogate, mean KL)``.

    Fisher in closed form: ``(1/N) Σ J_iᵀ diag(σ⁻²) J_i`` for ``(W, b)`` and ``2 I`` for ``log σ``.
    """
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, obs_dim, generator=generator, dtype=DTYPE)
    weight = leaf(0.5 * torch.randn(act_dim, obs_dim, generator=generator, dtype=DTYPE))
    bias = leaf(0.1 * torch.randn(act_dim, generator=generator, dtype=DTYPE))
    log_std = leaf(0.2 * torch.randn(act_dim, generator=generator, dtype=DTYPE))
    params = [weight, bias, log_std]
    with torch.no_grad():
        old = (obs @ weight.T + bias, log_std.clone())
        actions = old[0] + torch.randn(batch, act_dim, generator=generator, dtype=DTYPE) * old[1].exp()
    advantages = torch.randn(batch, generator=generator, dtype=DTYPE)
    old_log_prob = Normal(old[0], old[1].exp()).log_prob(actions).sum(-1)
    subsample = torch.arange(0, batch, 2)

    def outputs(rows: Tensor | slice = slice(None)) -> tuple[Tensor, Tensor]:
        return obs[rows] @ weight.T + bias, log_std

    def closure() -> tuple[Tensor, Tensor]:
        mean, log_sigma = outputs()
        log_prob = Normal(mean, log_sigma.exp()).log_prob(actions).sum(-1)
        return -(torch.exp(log_prob - old_log_prob) * advantages).mean(), gaussian_kl(old, (mean, log_sigma))

    def subsample_kl() -> Tensor:
        return gaussian_kl((old[0][subsample], old[1]), outputs(subsample))

    rows = subsample if curvature == "kl_subsample" else torch.arange(batch)

    def matrix() -> Tensor:
        precision = torch.exp(-2 * log_std.detach())
        mean_block = sum(
            block_jacobian(x, act_dim).T @ (precision[:, None] * block_jacobian(x, act_dim)) for x in obs[rows]
        )
        return torch.block_diag(mean_block / len(rows), 2.0 * torch.eye(act_dim, dtype=DTYPE))

    chosen = KLHessian(subsample_kl) if curvature == "kl_subsample" else KLHessian()
    return Problem(params, closure, chosen, matrix)


def linear_softmax_policy(seed: int, damping: float | None = 0.1, batch: int = 20, obs_dim: int = 3, actions: int = 3):
    """Logits ``W x`` (no bias); Fisher ``(1/N) Σ (diag p - ppᵀ) ⊗ x xᵀ``, singular, so damped by default."""
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, obs_dim, generator=generator, dtype=DTYPE)
    weight = leaf(0.5 * torch.randn(actions, obs_dim, generator=generator, dtype=DTYPE))
    with torch.no_grad():
        old = obs @ weight.T
    taken = torch.multinomial(torch.softmax(old, -1), 1, generator=generator).squeeze(-1)
    advantages = torch.randn(batch, generator=generator, dtype=DTYPE)
    old_log_prob = Categorical(logits=old).log_prob(taken)

    def closure() -> tuple[Tensor, Tensor]:
        logits = obs @ weight.T
        ratio = torch.exp(Categorical(logits=logits).log_prob(taken) - old_log_prob)
        return -(ratio * advantages).mean(), categorical_kl(old, logits)

    def matrix() -> Tensor:
        probs = torch.softmax(obs @ weight.detach().T, -1)
        fisher = (
            sum(torch.kron(categorical_output_fisher(p), torch.outer(x, x)) for p, x in zip(probs, obs, strict=True))
            / batch
        )
        return fisher if damping is None else fisher + damping * torch.eye(fisher.shape[0], dtype=DTYPE)

    curvature = KLHessian() if damping is None else Damped(KLHessian(), damping)
    return Problem([weight], closure, curvature, matrix)


def mlp_policy(seed: int, kind: str, layerwise: bool, batch: int = 16):
    """A tanh MLP policy (Gaussian with state-independent log-std, or categorical) with GaussNewton.

    Dense reference: ``JᵀMJ`` with ``J`` from :func:`torch.autograd.functional.jacobian`.
    """
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, 3, generator=generator, dtype=DTYPE)
    # small advantages: a short natural step, where the quadratic model of the KL holds and backtracking accepts
    advantages = 0.01 * torch.randn(batch, generator=generator, dtype=DTYPE)
    if kind == "gaussian":
        module = seeded(lambda: GaussianMLP(3, 4, 2, (2,)), seed)
        fisher = DiagonalGaussianFisher()
        with torch.no_grad():
            old = tuple(t.detach().clone() for t in module(obs))  # log_std is the parameter itself
            actions = old[0] + torch.randn(batch, 2, generator=generator, dtype=DTYPE) * old[1].exp()

        def distribution(outputs):
            return Normal(outputs[0], outputs[1].exp())

        def kl(outputs):
            return gaussian_kl(old, outputs)

        def log_prob(outputs):
            return distribution(outputs).log_prob(actions).sum(-1)

    else:
        module = seeded(lambda: MLP(3, 4, 3), seed)
        fisher = CategoricalFisher()
        with torch.no_grad():
            old = module(obs)
        actions = torch.multinomial(torch.softmax(old, -1), 1, generator=generator).squeeze(-1)

        def kl(outputs):
            return categorical_kl(old, outputs)

        def log_prob(outputs):
            return Categorical(logits=outputs).log_prob(actions)

    old_log_prob = log_prob(old)
    params = list(module.parameters())

    def closure() -> tuple[Tensor, Tensor]:
        outputs = module(obs)
        return -(torch.exp(log_prob(outputs) - old_log_prob) * advantages).mean(), kl(outputs)

    def matrix() -> Tensor:
        theta, at = flat_functional(module)
        if kind == "gaussian":
            mean_jacobian = torch.autograd.functional.jacobian(lambda t: at(t)(obs)[0].reshape(-1), theta)
            log_std_jacobian = torch.autograd.functional.jacobian(lambda t: at(t)(obs)[1].reshape(-1), theta)
            precision = torch.exp(-2 * module(obs)[1].detach()).repeat(batch) / batch
            return mean_jacobian.T @ (precision[:, None] * mean_jacobian) + 2.0 * log_std_jacobian.T @ log_std_jacobian
        jacobian = torch.autograd.functional.jacobian(lambda t: at(t)(obs), theta)  # (N, K, P)
        probs = torch.softmax(module(obs).detach(), -1)
        return sum(j.T @ categorical_output_fisher(p) @ j for j, p in zip(jacobian, probs, strict=True)) / batch

    curvature = GaussNewton.for_module(module, obs, fisher, layerwise=layerwise)
    return Problem(params, closure, curvature, matrix, extra={"module": module})


def convex_quartic(seed: int, mode: str, n_split: tuple[int, int] = (3, 2)):
    """``f(θ) = ½ θᵀMθ - bᵀθ + ¼ Σ θ⁴`` (strictly convex) in two parameter tensors; ``H = M + 3 diag(θ²)``."""
    generator = torch.Generator().manual_seed(seed)
    n = sum(n_split)
    m_matrix = symmetric_matrix(0.2 + 2.0 * torch.rand(n, generator=generator, dtype=DTYPE), generator)
    b = random_vector(n, generator)
    start = 0.5 * random_vector(n, generator)
    params = [leaf(part) for part in torch.split(start, list(n_split))]

    def function(*tensors: Tensor) -> Tensor:
        theta = torch.cat(tensors)
        return 0.5 * theta @ m_matrix @ theta - b @ theta + 0.25 * theta.pow(4).sum()

    def matrix() -> Tensor:
        return m_matrix + 3.0 * torch.diag(flat(params) ** 2)

    theta = start.clone()  # dense reference: Newton's method with closed-form derivatives, to machine precision
    for _ in range(100):
        theta = theta - torch.linalg.solve(m_matrix + 3.0 * torch.diag(theta**2), m_matrix @ theta - b + theta**3)
    curvatures = {"double_backward": Hessian(), "forward_over_reverse": Hessian(function)}
    curvature = Damped(Hessian(), 0.5) if mode == "damped" else curvatures[mode]

    def dense() -> Tensor:
        return matrix() + (0.5 * torch.eye(n, dtype=DTYPE) if mode == "damped" else 0.0)

    return Problem(params, lambda: function(*params), curvature, dense, False, theta)


EXP_TIMES = torch.linspace(0.0, 3.0, 10, dtype=DTYPE)
EXP_TARGETS = 2.0 * torch.exp(-0.7 * EXP_TIMES)


def exponential_residuals(amplitude: Tensor, rate: Tensor) -> Tensor:
    return amplitude * torch.exp(-rate * EXP_TIMES) - EXP_TARGETS


def exponential_fit(seed: int = 0):
    """``r = a exp(-k t) - y`` with exact data ``a = 2, k = 0.7``; ``A = JᵀJ`` with ``J = [e^{-kt}, -a t e^{-kt}]``."""
    del seed
    amplitude, rate = leaf(torch.tensor([1.0])), leaf(torch.tensor([0.3]))
    fit = ResidualGaussNewton(exponential_residuals)

    def matrix() -> Tensor:
        decay = torch.exp(-rate.detach() * EXP_TIMES)
        jacobian = torch.stack([decay, -amplitude.detach() * EXP_TIMES * decay], dim=1)
        return jacobian.T @ jacobian

    minimiser = torch.tensor([2.0, 0.7], dtype=DTYPE)
    return Problem([amplitude, rate], fit.closure([amplitude, rate]), fit, matrix, minimiser=minimiser)


def linear_regression(seed: int, layerwise: bool, batch: int = 30, inputs: int = 3, outputs: int = 2):
    """``(1/2N) Σ ‖W x + b - y‖²`` through an ``nn.Linear`` with ``GaussNewton(SquaredError(1/N))``.

    Convex quadratic; ``A = (1/N) Σ J_iᵀJ_i`` and the minimiser is the least-squares solution.
    """
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, inputs, generator=generator, dtype=DTYPE)
    targets = torch.randn(batch, outputs, generator=generator, dtype=DTYPE)
    module = seeded(lambda: nn.Sequential(nn.Linear(inputs, outputs)), seed)
    params = list(module.parameters())

    def closure() -> Tensor:
        return 0.5 * (module(obs) - targets).square().sum() / batch

    def matrix() -> Tensor:
        return sum(block_jacobian(x, outputs).T @ block_jacobian(x, outputs) for x in obs) / batch

    design = torch.cat([obs, torch.ones(batch, 1, dtype=DTYPE)], dim=1)
    solution = torch.linalg.lstsq(design, targets).solution  # (inputs + 1, outputs)
    minimiser = torch.cat([solution[:inputs].T.reshape(-1), solution[inputs]])
    curvature = GaussNewton.for_module(module, obs, SquaredError(1.0 / batch), layerwise=layerwise)
    return Problem(params, closure, curvature, matrix, minimiser=minimiser, extra={"module": module})


def softmax_regression(seed: int, damping: float | None, batch: int = 30, inputs: int = 3, classes: int = 3):
    """Cross-entropy of logits ``[W x + b, 0]`` against soft targets from a true ``(W*, b*)``.

    Convex; its Hessian is the Fisher ``(1/N) Σ J_iᵀ(diag p - ppᵀ)J_i``, which is the Hessian of the
    closure's constraint ``KL(π_θ₀ ‖ π_θ)`` too, so ``KLHessian()`` is the exact Hessian here. The
    minimiser is ``(W*, b*)``: the model reproduces the targets there.
    """
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, inputs, generator=generator, dtype=DTYPE)
    free = classes - 1
    true_weight = torch.randn(free, inputs, generator=generator, dtype=DTYPE)
    true_bias = 0.5 * torch.randn(free, generator=generator, dtype=DTYPE)
    weight, bias = leaf(torch.zeros(free, inputs)), leaf(torch.zeros(free))
    params = [weight, bias]

    def logits(w: Tensor, b: Tensor) -> Tensor:
        return torch.cat([obs @ w.T + b, torch.zeros(batch, 1, dtype=DTYPE)], dim=1)

    targets = torch.softmax(logits(true_weight, true_bias), -1)
    start = logits(weight, bias).detach()

    def closure() -> tuple[Tensor, Tensor]:
        current = logits(weight, bias)
        loss = -(targets * torch.log_softmax(current, -1)).sum(-1).mean()
        return loss, categorical_kl(start, current)

    def matrix() -> Tensor:
        probs = torch.softmax(logits(weight.detach(), bias.detach()), -1)[:, :free]
        jacobians = [block_jacobian(x, free) for x in obs]
        fisher = sum(j.T @ categorical_output_fisher(p) @ j for j, p in zip(jacobians, probs, strict=True)) / batch
        return fisher if damping is None else fisher + damping * torch.eye(fisher.shape[0], dtype=DTYPE)

    minimiser = torch.cat([true_weight.reshape(-1), true_bias])
    curvature = KLHessian() if damping is None else Damped(KLHessian(), damping)
    return Problem(params, closure, curvature, matrix, minimiser=minimiser)


# ============================================================================= 1. each operator = its closed form

OPERATORS: dict[str, Callable[[], Problem]] = {
    "kl_hessian-gaussian": lambda: linear_gaussian_policy(0),
    "kl_hessian-constraint_function": lambda: linear_gaussian_policy(1, "kl_subsample"),
    "kl_hessian-softmax_singular": lambda: linear_softmax_policy(2, damping=None),
    "damped-kl_hessian": lambda: linear_softmax_policy(3, damping=0.1),
    "gauss_newton-layerwise-gaussian": lambda: mlp_policy(4, "gaussian", layerwise=True),
    "gauss_newton-autograd-gaussian": lambda: mlp_policy(4, "gaussian", layerwise=False),
    "gauss_newton-layerwise-categorical": lambda: mlp_policy(5, "categorical", layerwise=True),
    "gauss_newton-autograd-categorical": lambda: mlp_policy(5, "categorical", layerwise=False),
    "gauss_newton-layerwise-squared_error": lambda: linear_regression(6, layerwise=True),
    "gauss_newton-autograd-squared_error": lambda: linear_regression(6, layerwise=False),
    "hessian-double_backward": lambda: convex_quartic(7, "double_backward"),
    "hessian-forward_over_reverse": lambda: convex_quartic(7, "forward_over_reverse"),
    "damped-hessian": lambda: convex_quartic(7, "damped"),
    "residual_gauss_newton": exponential_fit,
    "kl_hessian-softmax_regression": lambda: softmax_regression(8, None),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_each_curvature_operator_is_its_closed_form(name: str) -> None:
    problem = OPERATORS[name]()
    operator = build(problem.curvature, problem.params, problem.closure)
    expected = problem.matrix()
    dense = operator.dense(DTYPE)

    assert operator.dim == expected.shape[0] == sum(p.numel() for p in problem.params)
    assert operator.products == operator.dim
    torch.testing.assert_close(dense, expected, rtol=1e-10, atol=1e-12 * expected.abs().max().item())
    assert operator.positive_semidefinite is problem.positive_semidefinite
    if problem.positive_semidefinite:
        assert torch.linalg.eigvalsh(0.5 * (dense + dense.T))[0].item() >= -1e-12 * dense.abs().max().item()


def test_the_layerwise_and_autograd_gauss_newton_paths_are_the_same_operator() -> None:
    dense = {}
    for layerwise in (True, False):
        problem = mlp_policy(9, "gaussian", layerwise)
        dense[layerwise] = build(problem.curvature, problem.params, problem.closure).dense(DTYPE)
    torch.testing.assert_close(dense[True], dense[False], rtol=1e-12, atol=1e-14)


# ============================================================================= 2. TrustRegionOptimizer's step

SOLVERS: dict[str, Callable[[int], object]] = {
    "cg": lambda n: ConjugateGradient(max_iter=10 * n, tol=1e-12),
    "steihaug": lambda n: SteihaugCG(max_iter=None, tol=1e-12),
    "dense": lambda n: DenseSolver(),
}
LINE_SEARCHES = {"backtracking": BacktrackingLineSearch, "none": NoLineSearch}
KL_PROBLEMS: dict[str, Callable[[], Problem]] = {
    "kl_hessian-gaussian": lambda: linear_gaussian_policy(10),
    "kl_hessian-constraint_function": lambda: linear_gaussian_policy(11, "kl_subsample"),
    "damped-kl_hessian": lambda: linear_softmax_policy(12, damping=0.1),
    "gauss_newton-layerwise": lambda: mlp_policy(13, "gaussian", layerwise=True),
    "gauss_newton-autograd": lambda: mlp_policy(13, "gaussian", layerwise=False),
    "hessian-double_backward": lambda: convex_quartic(14, "double_backward"),
    "hessian-forward_over_reverse": lambda: convex_quartic(14, "forward_over_reverse"),
    "residual_gauss_newton": exponential_fit,
}


def check_natural_step(problem: Problem, solver_name: str, search_name: str, kl_multiple: float) -> None:
    """One step with ``δ = kl_multiple · ½ gᵀA⁻¹g`` against the closed form ``β A⁻¹g``.

    ``kl_multiple > 1`` puts the Newton point ``A⁻¹g`` inside the KL ball (every solver converges and
    ``β > 1`` stretches it to the boundary); ``< 1`` outside, where SteihaugCG stops on the boundary
    with a Krylov approximation of the closed form, which maximises ``gᵀs`` on the ball. The closure
    records where it is evaluated: its first trial point is the full step ``Δθ``, whatever the line
    search then makes of it.
    """
    matrix, gradient = problem.matrix(), negative_gradient(problem.params, problem.closure)
    newton = torch.linalg.solve(matrix, gradient)
    newton_kl = 0.5 * (gradient @ newton).item()
    max_kl = kl_multiple * newton_kl
    beta = math.sqrt(2.0 * max_kl / (gradient @ newton).item())
    closed_form = beta * newton
    before = flat(problem.params)
    visited: list[Tensor] = []

    def closure() -> object:
        visited.append(flat(problem.params) - before)
        return problem.closure()

    solver = SOLVERS[solver_name](gradient.numel())
    line_search = LINE_SEARCHES[search_name]()
    opt = TrustRegionOptimizer(
        problem.params, max_kl, curvature=problem.curvature, solver=solver, line_search=line_search
    )

    opt.step(closure)

    result = opt.last_result
    assert torch.equal(visited[0], torch.zeros_like(before))
    full_step = visited[1]
    full_kl = 0.5 * (full_step @ matrix @ full_step).item()
    assert full_kl == pytest.approx(max_kl, rel=1e-9)  # Δθ lies on the quadratic KL boundary
    if solver_name == "steihaug" and kl_multiple < 1.0:
        assert result.solver_reason is SolverReason.BOUNDARY
        assert 0.0 < (gradient @ full_step).item() <= (gradient @ closed_form).item() * (1 + 1e-10)
    else:
        if solver_name != "dense":
            assert result.solver_reason is SolverReason.CONVERGED
        torch.testing.assert_close(full_step, closed_form, rtol=1e-7, atol=1e-9 * closed_form.norm().item())
        assert result.step_scale == pytest.approx(beta, rel=1e-7)
        assert result.expected_improvement == pytest.approx(math.sqrt(2.0 * max_kl * 2.0 * newton_kl), rel=1e-7)
    step = flat(problem.params) - before
    assert result.accepted, result.reason.message  # every problem here has a short enough natural step
    if search_name == "none":
        assert result.step_fraction == 1.0 and result.backtracks == 0
    assert 0.0 < result.step_fraction <= 1.0
    assert len(visited) == 2 + result.backtracks
    assert torch.equal(step, visited[1 + result.backtracks])  # the accepted trial point, exactly
    torch.testing.assert_close(step, result.step_fraction * full_step, rtol=1e-12, atol=1e-15)
    assert 0.5 * (step @ matrix @ step).item() <= max_kl * (1.0 + 1e-6)
    if search_name == "backtracking":
        assert result.loss_after < result.loss_before


# δ as a multiple of the Newton point's quadratic KL: outside the ball (0.05) SteihaugCG stops on the boundary,
# inside (1.5) it converges; CG and the dense solver give the closed form either way, so each runs once.
SOLVER_AND_KL = [("cg", 0.05), ("dense", 1.5), ("steihaug", 0.05), ("steihaug", 1.5)]


@pytest.mark.parametrize("search_name", sorted(LINE_SEARCHES))
@pytest.mark.parametrize(("solver_name", "kl_multiple"), SOLVER_AND_KL)
@pytest.mark.parametrize("problem_name", sorted(KL_PROBLEMS))
def test_natural_step_is_the_closed_form(problem_name: str, solver_name: str, kl_multiple: float, search_name: str):
    check_natural_step(KL_PROBLEMS[problem_name](), solver_name, search_name, kl_multiple)


@settings(deadline=None, max_examples=EXAMPLES)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 10),
    log_condition=st.floats(0.0, 4.0),
    solver_name=st.sampled_from(sorted(SOLVERS)),
    search_name=st.sampled_from(sorted(LINE_SEARCHES)),
    kl_multiple=st.sampled_from([0.01, 0.3, 1.5]),
)
def test_natural_step_on_random_spd_quadratics(
    seed: int, n: int, log_condition: float, solver_name: str, search_name: str, kl_multiple: float
) -> None:
    """``f(θ) = ½ θᵀMθ - bᵀθ`` with ``Hessian(f)``: the step is ``β M⁻¹(b - Mθ)`` for any SPD ``M``.

    The closure's constraint is the exact quadratic ``½ (θ - θ₀)ᵀM(θ - θ₀)``, so the line search measures
    the same KL the step was scaled to.
    """
    generator = torch.Generator().manual_seed(seed)
    m_matrix = symmetric_matrix(log_spaced_eigenvalues(n, 10.0**log_condition), generator)
    b, theta = random_vector(n, generator), leaf(random_vector(n, generator))
    anchor = theta.detach().clone()

    def function(x: Tensor) -> Tensor:
        return 0.5 * x @ m_matrix @ x - b @ x

    def closure() -> tuple[Tensor, Tensor]:
        return function(theta), 0.5 * (theta - anchor) @ m_matrix @ (theta - anchor)

    problem = Problem([theta], closure, Hessian(function), lambda: m_matrix, False)
    check_natural_step(problem, solver_name, search_name, kl_multiple)


# ============================================================================= 3. TrustRegionMinimizer: convergence

CONTROLS: dict[str, Callable[[], object]] = {
    "trust_radius-euclidean": lambda: TrustRadius(gtol=1e-10),
    "trust_radius-operator": lambda: TrustRadius(metric="operator", gtol=1e-10),
    "levenberg_marquardt": lambda: LevenbergMarquardt(gtol=1e-10),
    "levenberg_marquardt-scaled": lambda: LevenbergMarquardt(gtol=1e-10, scaled=True),
}
MINIMIZER_SOLVERS: dict[str, Callable[[], object]] = {
    "cg": lambda: ConjugateGradient(max_iter=50),
    "steihaug": SteihaugCG,
    "dense": DenseSolver,
}
CONVEX_PROBLEMS: dict[str, Callable[[], Problem]] = {
    "hessian-double_backward": lambda: convex_quartic(20, "double_backward"),
    "hessian-forward_over_reverse": lambda: convex_quartic(20, "forward_over_reverse"),
    "residual_gauss_newton": exponential_fit,
    "gauss_newton-layerwise": lambda: linear_regression(21, layerwise=True),
    "gauss_newton-autograd": lambda: linear_regression(21, layerwise=False),
    "kl_hessian": lambda: softmax_regression(22, None),
    "damped-kl_hessian": lambda: softmax_regression(22, 1e-3),
}
VALID = [
    (problem, control, solver)
    for problem in sorted(CONVEX_PROBLEMS)
    for control in sorted(CONTROLS)
    for solver in sorted(MINIMIZER_SOLVERS)
    if control == "trust_radius-euclidean" or not problem.startswith("hessian")
]


def model_reduction(gradient: Tensor, matrix: Tensor, step: Tensor) -> float:
    """``gᵀs - ½ sᵀAs``: the decrease of the (undamped) quadratic model."""
    return (gradient @ step - 0.5 * step @ matrix @ step).item()


def minimize(problem: Problem, control, solver, max_steps: int = 200):
    """Run to ``Reason.CONVERGED``, checking every step; returns the results."""
    opt = TrustRegionMinimizer(problem.params, curvature=problem.curvature, solver=solver, control=control)
    results = []
    for _ in range(max_steps):
        before = flat(problem.params)
        gradient, matrix = negative_gradient(problem.params, problem.closure), problem.matrix()
        opt.step(problem.closure)
        result = opt.last_result
        results.append(result)
        step = flat(problem.params) - before
        rounding = 10 * EPS * max(1.0, abs(result.loss_before))
        if not result.accepted:
            assert torch.equal(step, torch.zeros_like(step))  # bit for bit: nothing moved
        else:
            # Every accepted step decreases the loss; below the loss's rounding level ρ is pulled to 1 by
            # design (Conn, Gould & Toint), so there only "no increase beyond rounding" is asserted.
            assert result.loss_after <= result.loss_before + rounding
            if result.expected_improvement > 1e3 * rounding:
                assert result.loss_after < result.loss_before
            # The reported prediction is the dense model's, with the damping of LM taken off.
            assert result.expected_improvement == pytest.approx(
                model_reduction(gradient, matrix, step), rel=1e-6, abs=1e3 * rounding
            )
        if result.reason is Reason.CONVERGED:
            return opt, results
    raise AssertionError(f"no convergence in {max_steps} steps: {results[-1]}")


@pytest.mark.parametrize(("problem_name", "control_name", "solver_name"), VALID)
def test_minimizer_converges_to_the_dense_minimiser(problem_name: str, control_name: str, solver_name: str) -> None:
    problem = CONVEX_PROBLEMS[problem_name]()
    _, results = minimize(problem, CONTROLS[control_name](), MINIMIZER_SOLVERS[solver_name]())

    assert results[-1].reason is Reason.CONVERGED
    assert results[-1].gradient_norm <= 1e-10
    torch.testing.assert_close(flat(problem.params), problem.minimiser, rtol=1e-7, atol=1e-7)
    assert sum(r.accepted for r in results) >= 1
    losses = [results[0].loss_before] + [r.loss_after for r in results if r.accepted]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("control_name", ["trust_radius-operator", "levenberg_marquardt"])
@pytest.mark.parametrize("problem_name", ["double_backward", "forward_over_reverse", "damped"])
def test_indefinite_curvature_with_an_operator_bounded_region_raises(problem_name: str, control_name: str) -> None:
    problem = convex_quartic(23, problem_name)
    opt = TrustRegionMinimizer(problem.params, curvature=problem.curvature, control=CONTROLS[control_name]())
    saved = [p.detach().clone() for p in problem.params]
    with pytest.raises(ValueError, match="positive semidefinite"):
        opt.step(problem.closure)
    assert all(torch.equal(p.detach(), s) for p, s in zip(problem.params, saved, strict=True))


@settings(deadline=None, max_examples=EXAMPLES)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 6),
    extra_rows=st.integers(0, 8),
    log_condition=st.floats(0.0, 3.0),
    control_name=st.sampled_from(sorted(CONTROLS)),
    solver_name=st.sampled_from(sorted(MINIMIZER_SOLVERS)),
)
def test_minimizer_solves_random_least_squares(
    seed: int, n: int, extra_rows: int, log_condition: float, control_name: str, solver_name: str
) -> None:
    """``½ ‖Xθ - y‖²`` with ``ResidualGaussNewton``: the minimiser is ``lstsq(X, y)`` for any full-rank ``X``."""
    generator = torch.Generator().manual_seed(seed)
    rows = n + extra_rows
    left = torch.linalg.qr(torch.randn(rows, n, generator=generator, dtype=DTYPE)).Q
    design = left @ symmetric_matrix(log_spaced_eigenvalues(n, 10.0**log_condition), generator)
    targets = random_vector(rows, generator)
    theta = leaf(torch.zeros(n))
    fit = ResidualGaussNewton(lambda x: design @ x - targets)
    problem = Problem([theta], fit.closure([theta]), fit, lambda: design.T @ design)

    minimize(problem, CONTROLS[control_name](), MINIMIZER_SOLVERS[solver_name]())

    reference = torch.linalg.lstsq(design, targets).solution
    torch.testing.assert_close(theta.detach(), reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["double_backward", "forward_over_reverse"])
def test_newton_cg_escapes_a_saddle_with_zero_gradient(mode: str) -> None:
    """``f = x² - y² + y⁴`` at the saddle ``(0, 0)``: ``∇f = 0`` exactly, the step follows ``-y²`` downhill."""

    def function(x: Tensor, y: Tensor) -> Tensor:
        return (x.square() - y.square() + y.pow(4)).sum()

    x, y = leaf(torch.zeros(1)), leaf(torch.zeros(1))
    curvature = Hessian() if mode == "double_backward" else Hessian(function)
    opt = TrustRegionMinimizer([x, y], curvature=curvature, control=TrustRadius(0.5, gtol=1e-10))
    opt.step(lambda: function(x, y))
    first = opt.last_result
    assert first.accepted and first.gradient_norm == 0.0
    assert first.solver_reason is SolverReason.NEGATIVE_CURVATURE
    assert first.min_curvature == pytest.approx(-2.0, rel=1e-9)
    assert abs(y.item()) == pytest.approx(0.5, rel=1e-12) and x.item() == pytest.approx(0.0, abs=1e-12)
    for _ in range(50):
        opt.step(lambda: function(x, y))
        if opt.last_result.reason is Reason.CONVERGED:
            break
    assert opt.last_result.reason is Reason.CONVERGED
    assert abs(y.item()) == pytest.approx(math.sqrt(0.5), rel=1e-9)
    assert x.item() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("control_name", sorted(CONTROLS))
def test_a_positive_semidefinite_curvature_at_zero_gradient_converges_without_a_probe(control_name: str) -> None:
    problem = linear_regression(24, layerwise=False)
    with torch.no_grad():
        for p, value in zip(problem.params, torch.split(problem.minimiser, [6, 2]), strict=True):
            p.copy_(value.view_as(p))
    opt = TrustRegionMinimizer(problem.params, curvature=problem.curvature, control=CONTROLS[control_name]())
    opt.step(problem.closure)
    result = opt.last_result
    assert result.reason is Reason.CONVERGED and not result.accepted
    assert math.isnan(result.min_curvature)  # no Lanczos probe ...
    scaled = getattr(opt.control, "scaled", False)
    assert result.curvature_products == (8 if scaled else 0)  # ... only Moré's diag(A), n = 8 products


def test_the_radius_does_not_collapse_at_a_minimum_where_reductions_are_rounding() -> None:
    """Past convergence (``gtol = 0``) actual and predicted reductions are rounding noise; ρ is pulled to 1."""
    problem = convex_quartic(25, "double_backward")
    with torch.no_grad():
        for p, value in zip(problem.params, torch.split(problem.minimiser, [3, 2]), strict=True):
            p.copy_(value)
    opt = TrustRegionMinimizer(problem.params, curvature=problem.curvature, control=TrustRadius(gtol=0.0))
    radii = []
    for _ in range(12):
        opt.step(problem.closure)
        result = opt.last_result
        assert result.gradient_norm < 1e-12
        assert result.accepted and result.reason is Reason.ACCEPTED
        radii.append(opt.control_state.radius)
    assert min(radii) >= 1.0


# ============================================================================= 4. the solvers' stopping rules

EXACT_RHS = torch.tensor([1.0, -2.0, 3.0, 4.0], dtype=DTYPE)  # integers: every dot product below is exact


def doubling() -> LinearOperator:
    return LinearOperator(lambda v: 2.0 * v, 4, positive_semidefinite=True)


@pytest.mark.parametrize("solver", [ConjugateGradient(max_iter=5, tol=0.0), SteihaugCG(max_iter=5, tol=0.0)])
def test_tolerance_zero_stops_at_an_exact_solution(solver) -> None:
    """``A = 2I``: one step solves exactly (residual 0.0); ``tol = 0`` must stop there and call it converged."""
    operator = doubling()
    result = solver(operator, EXACT_RHS)
    assert result.reason is SolverReason.CONVERGED
    assert result.iterations == 1 and operator.products == 1
    assert torch.equal(result.direction, 0.5 * EXACT_RHS)
    assert result.relative_residual == 0.0
    assert result.curvature == result.gradient_dot == 15.0
    assert result.usable


def test_steihaug_default_cap_is_ten_times_the_dimension() -> None:
    """``max_iter=None`` is documented as ``10 n``: an operator on which CG never converges stops there.

    ``I + S`` with ``S`` skew-symmetric has ``pᵀAp = ‖p‖² > 0`` along every direction, but CG's
    residual never vanishes, so only the cap ends the solve.
    """
    n = 4
    skew = torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    matrix = torch.eye(n, dtype=DTYPE) + (skew - skew.T)
    operator = LinearOperator(lambda v: matrix @ v, n, positive_semidefinite=True)
    result = SteihaugCG(tol=1e-10)(operator, torch.ones(n, dtype=DTYPE))  # no region: only the cap stops it
    assert result.reason is SolverReason.MAX_ITERATIONS
    assert operator.products == result.iterations == 10 * n


def test_steihaug_default_cap_lets_rounding_finish_an_ill_conditioned_solve() -> None:
    """κ = 1e8, n = 10: exact arithmetic needs n products, rounding needs several times more (never 10 n)."""
    generator = torch.Generator().manual_seed(1)
    matrix = symmetric_matrix(log_spaced_eigenvalues(10, 1e8), generator)
    rhs = random_vector(10, generator)
    result = SteihaugCG(tol=1e-10)(LinearOperator(lambda v: matrix @ v, 10, positive_semidefinite=True), rhs)
    assert result.reason is SolverReason.CONVERGED
    assert result.iterations > 10
    torch.testing.assert_close(result.direction, torch.linalg.solve(matrix, rhs), rtol=1e-1, atol=1e-12)
    assert ((rhs - matrix @ result.direction).norm() / rhs.norm()).item() <= 1e-9


# ============================================================================= 5. the radius controls' rules


@pytest.mark.parametrize(
    ("radius", "ratio", "step_norm", "expected"),
    [
        (2.0, 0.2, 2.0, 0.5),  # ρ < 1/4: Δ/4
        (2.0, -math.inf, 0.1, 0.5),  # a failed evaluation shrinks too
        (2.0, 0.25, 2.0, 2.0),  # ρ = 1/4 exactly: kept
        (2.0, 0.5, 2.0, 2.0),  # 1/4 <= ρ <= 3/4: kept
        (2.0, 0.75, 2.0, 2.0),  # ρ = 3/4 exactly: kept
        (2.0, 0.76, 2.0, 4.0),  # ρ > 3/4 on the boundary: 2Δ
        (2.0, 0.9, 2.0 * (1 - 1e-6), 4.0),  # the boundary up to rounding of the norm (1 - 1e-5)
        (2.0, 0.9, 2.0 * (1 - 1e-4), 2.0),  # clearly inside: kept
        (2.0, 1.0, 1.0, 2.0),  # a full Newton step inside: kept
        (6.0, 0.9, 6.0, 8.0),  # capped at Δ̂
    ],
)
def test_trust_radius_follows_nocedal_wright_algorithm_4_1(radius, ratio, step_norm, expected) -> None:
    control = TrustRadius(initial_radius=1.0, max_radius=8.0)
    assert control.update(TrustRadiusState(radius), ratio, step_norm) == TrustRadiusState(expected)


@pytest.mark.parametrize(("ratio", "accepted"), [(-math.inf, False), (0.0, False), (0.15, False), (0.1501, True)])
def test_trust_radius_accepts_above_eta(ratio: float, accepted: bool) -> None:
    assert TrustRadius().accept(ratio) is accepted


@pytest.mark.parametrize(
    ("ratio", "factor"),
    [(1.0, 1.0 / 3.0), (0.9, 1.0 - 0.8**3), (0.75, 0.875), (0.5, 1.0), (0.25, 1.125), (0.01, 1.0 - (-0.98) ** 3)],
)
def test_levenberg_marquardt_shrinks_after_a_taken_step_by_nielsens_rule(ratio: float, factor: float) -> None:
    control = LevenbergMarquardt(initial_damping=1e-3)
    state = control.update(DampingState(0.5, growth=16.0), ratio, 1.0)
    assert state.damping == pytest.approx(0.5 * factor, rel=1e-15)
    assert state.growth == 2.0


def test_levenberg_marquardt_grows_ever_faster_after_rejections_within_its_bounds() -> None:
    control = LevenbergMarquardt(initial_damping=1e-3, max_damping=1.0)
    assert control.init() == DampingState(1e-3, 2.0)
    states = [control.init()]
    for ratio in (0.0, -0.5, -math.inf):
        assert not control.accept(ratio)
        states.append(control.update(states[-1], ratio, 1.0))
    assert states[1:] == [DampingState(2e-3, 4.0), DampingState(8e-3, 8.0), DampingState(6.4e-2, 16.0)]
    for _ in range(40):
        states.append(control.update(states[-1], -1.0, 1.0))
    assert states[-1].damping == 1.0
    assert states[-1].growth == 2.0**30
    small = LevenbergMarquardt(initial_damping=1e-3, min_damping=1e-4)
    assert small.update(DampingState(1e-4), 1.0, 1.0).damping == 1e-4


def test_scaled_levenberg_marquardt_damps_with_the_largest_column_norms_seen() -> None:
    """Moré's scaling: ``D_j = max_k sqrt(A_jj)`` over the points seen, a zero column starting at 1."""
    control = LevenbergMarquardt(initial_damping=0.5, scaled=True)
    state = control.observe(control.init(), lambda: torch.tensor([4.0, 0.0, 1.0], dtype=DTYPE))
    assert state.scale == (2.0, 1.0, 1.0)
    state = control.observe(state, lambda: torch.tensor([1.0, 9.0, 0.25], dtype=DTYPE))
    assert state.scale == (2.0, 3.0, 1.0)
    torch.testing.assert_close(control.shift(state), torch.tensor([2.0, 4.5, 0.5], dtype=torch.float64))
    assert control.update(state, 1.0, 1.0).scale == state.scale
    assert control.update(state, -1.0, 1.0).scale == state.scale

    def never() -> Tensor:
        raise AssertionError("an unscaled control needs no diagonal")

    unscaled = LevenbergMarquardt(initial_damping=0.5)
    assert unscaled.observe(unscaled.init(), never) == unscaled.init()
    assert unscaled.shift(unscaled.init()) == 0.5


def test_improvement_ratio_pulls_rounding_level_reductions_to_one() -> None:
    rounding = 10 * EPS
    assert improvement_ratio(1.0, 0.5, 1.0, 0.0) == 0.5
    assert improvement_ratio(1.0, 0.5, 1.0, rounding) == pytest.approx(0.5, rel=1e-14)
    assert improvement_ratio(1.0, 1.0, 1e-30, rounding) == pytest.approx(1.0, rel=1e-12)
    assert improvement_ratio(1.0, 1.0 + EPS, 1e-30, rounding) == pytest.approx(0.9, rel=1e-9)
    assert improvement_ratio(3.0, 1.0, 2.0, rounding) == pytest.approx(1.0, rel=1e-15)
    for predicted in (0.0, -1.0, math.nan, math.inf):
        assert improvement_ratio(1.0, 0.5, predicted, rounding) == -math.inf
    assert improvement_ratio(1.0, math.nan, 1.0, rounding) == -math.inf


@pytest.mark.parametrize("control_name", sorted(CONTROLS))
def test_the_minimizer_hands_the_control_its_ratio_and_keeps_the_next_state(control_name: str) -> None:
    """The state the minimizer keeps after each step is the control's update of ρ and the step norm.

    A scaled control first sees ``diag(A)`` at every new point (the first, and after each accepted step).
    """
    problem = exponential_fit()
    control = CONTROLS[control_name]()
    opt = TrustRegionMinimizer(problem.params, curvature=problem.curvature, control=control)
    state = control.init()
    assert opt.control_state == state
    new_point = True
    for _ in range(6):
        if new_point:
            state = control.observe(state, lambda: problem.matrix().diagonal())
        opt.step(problem.closure)
        result = opt.last_result
        if result.reason is Reason.CONVERGED:
            break
        rounding = 10 * EPS * max(1.0, abs(result.loss_before))
        loss_after_trial = result.loss_before - result.actual_improvement
        ratio = improvement_ratio(result.loss_before, loss_after_trial, result.expected_improvement, rounding)
        assert result.accepted is control.accept(ratio)
        assert (result.radius, result.damping) == (control.region(state).radius, control.damping(state))
        state = control.update(state, ratio, result.step_norm)
        kept = opt.control_state
        assert type(kept) is type(state)
        for name, value in vars(state).items():  # ρ recomputed from the result: equal up to rounding
            assert getattr(kept, name) == (value if value is None else pytest.approx(value, rel=1e-12))
        state, new_point = kept, result.accepted
