"""TrustRegionOptimizer: closed-form steps, line-search guarantees, bookkeeping and bad input (float64)."""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from trustregion_helpers import (
    DTYPE,
    LinearSoftmaxPolicy,
    bitwise_equal,
    categorical_kl,
    dense_kl_hessian,
    flat,
    log_spaced_eigenvalues,
    policy_closure,
    random_vector,
    seeded,
    snapshot,
    symmetric_matrix,
)

from trustregion import (
    BacktrackingLineSearch,
    ConjugateGradient,
    Curvature,
    Damped,
    DenseSolver,
    Hessian,
    KLHessian,
    KLStepResult,
    LinearOperator,
    NoLineSearch,
    RadiusStepResult,
    Reason,
    SteihaugCG,
    StepProblem,
    TrustRegionOptimizer,
)
from trustregion.result import SolverReason, SolverResult

seeds = st.integers(0, 2**31 - 1)


# ----------------------------------------------------------------------------- problems with a known g and F


@dataclass
class QuadraticProblem:
    """Loss ``-gᵀd`` and constraint ``½ dᵀFd + c Σ d⁴`` in ``d = θ - θ0``, with ``θ`` split over two tensors.

    The constraint's Hessian at ``θ0`` is ``F`` whatever ``c``; ``c > 0`` makes the measured KL
    exceed the quadratic model, which is what sends the line search backwards.
    """

    params: list[nn.Parameter]
    theta0: Tensor
    gradient: Tensor  # g = -∇loss
    fisher: Tensor
    quartic: float = 0.0
    penalty: float = 0.0  # adds penalty·‖d‖² to the loss (an increase away from θ0)

    def displacement(self) -> Tensor:
        return torch.cat([p.reshape(-1) for p in self.params]) - self.theta0.to(self.params[0].dtype)

    def loss_and_constraint(self) -> tuple[Tensor, Tensor]:
        d = self.displacement()
        fisher, gradient = self.fisher.to(d.dtype), self.gradient.to(d.dtype)
        loss = -(gradient @ d) + self.penalty * (d @ d)
        constraint = 0.5 * d @ fisher @ d + self.quartic * (d**4).sum()
        return loss, constraint

    def restart(self) -> None:
        """Make the current parameters ``θ_old`` of the next step: the constraint is measured from them."""
        self.theta0 = torch.cat([p.detach().reshape(-1) for p in self.params]).to(self.theta0.dtype)

    def closed_form_step(self, max_kl: float) -> Tensor:
        """``sqrt(2δ / gᵀF⁻¹g) · F⁻¹g``."""
        natural = torch.linalg.solve(self.fisher, self.gradient)
        return math.sqrt(2 * max_kl / (self.gradient @ natural).item()) * natural


def quadratic_problem(
    n: int, seed: int, dtype: torch.dtype = DTYPE, condition: float = 100.0, **kw
) -> QuadraticProblem:
    generator = torch.Generator().manual_seed(seed)
    fisher = symmetric_matrix(log_spaced_eigenvalues(n, condition), generator)
    gradient = random_vector(n, generator)
    theta0 = random_vector(n, generator)
    split = max(1, n // 2)
    params = [nn.Parameter(theta0[:split].clone().to(dtype)), nn.Parameter(theta0[split:].clone().to(dtype))]
    params = [p for p in params if p.numel() > 0]
    return QuadraticProblem(params, theta0, gradient, fisher, **kw)


class Recording:
    """Counts what a step did: closure calls, (wrapped) solver results and curvature products.

    ``solver_products`` holds, for every solve, the products the operator it was handed counted during it.
    """

    def __init__(self) -> None:
        self.solves: list[SolverResult] = []
        self.solver_products: list[int] = []
        self.products = 0


class RecordingSolver(ConjugateGradient):
    def __init__(self, recording: Recording, **kw) -> None:
        super().__init__(**kw)
        self.recording = recording

    def __call__(self, operator: LinearOperator, rhs: Tensor) -> SolverResult:
        before = operator.products
        result = super().__call__(operator, rhs)
        self.recording.solves.append(result)
        self.recording.solver_products.append(operator.products - before)
        return result


class CountingCurvature(Curvature):
    def __init__(self, inner: Curvature, recording: Recording) -> None:
        self.inner, self.recording = inner, recording
        self.needs_loss_graph = inner.needs_loss_graph

    def build(self, problem: StepProblem) -> LinearOperator:
        operator = self.inner.build(problem)

        def counted(vector: Tensor) -> Tensor:
            self.recording.products += 1
            return operator(vector)

        return LinearOperator(counted, operator.dim, positive_semidefinite=operator.positive_semidefinite)


# ----------------------------------------------------------------------------- closed forms


@settings(max_examples=15)
@given(n=st.integers(1, 12), seed=seeds, log_max_kl=st.floats(-4.0, -1.0), dense=st.booleans())
def test_step_is_the_closed_form_natural_gradient_step(n: int, seed: int, log_max_kl: float, dense: bool) -> None:
    problem = quadratic_problem(n, seed)
    max_kl = 10.0**log_max_kl
    solver = DenseSolver() if dense else ConjugateGradient(max_iter=10 * n, tol=1e-12)
    opt = TrustRegionOptimizer(
        problem.params, max_kl=max_kl, curvature=KLHessian(), solver=solver, line_search=NoLineSearch()
    )
    loss_before = opt.step(problem.loss_and_constraint)

    result = opt.last_result
    assert isinstance(result, KLStepResult)
    assert result.accepted and result.reason is Reason.ACCEPTED
    assert loss_before.dtype == DTYPE and loss_before.item() == 0.0
    expected = problem.closed_form_step(max_kl)
    assert torch.allclose(problem.displacement().detach(), expected, rtol=1e-9, atol=1e-12)
    assert result.constraint_after == pytest.approx(max_kl, rel=1e-9)
    assert result.kl_after == result.constraint_after
    # A linear loss improves by exactly what the linear model expects.
    assert result.actual_improvement == pytest.approx(result.expected_improvement, rel=1e-9)
    assert (result.step_fraction, result.backtracks, result.closure_calls) == (1.0, 0, 2)


def test_the_boundary_step_of_an_exact_quadratic_model_is_accepted() -> None:
    # The constraint is exactly the quadratic model, so the full step lands on ½ ΔθᵀFΔθ = δ. Rounding puts the
    # measured KL at δ(1 + 4e-16) here; the backtracking search must not throw 20% of the step away for that.
    problem = quadratic_problem(6, seed=0)
    opt = TrustRegionOptimizer(problem.params, max_kl=0.01, curvature=KLHessian(), solver=DenseSolver())
    opt.step(problem.loss_and_constraint)
    result = opt.last_result
    assert result.accepted
    assert result.backtracks == 0, f"the full step was rejected ({result.backtracks} backtracks)"
    assert torch.allclose(problem.displacement().detach(), problem.closed_form_step(0.01), rtol=1e-9, atol=1e-12)


def softmax_policy_problem(seed: int, batch: int = 16, obs_dim: int = 3, actions: int = 3):
    policy = seeded(lambda: LinearSoftmaxPolicy(obs_dim, actions), seed)
    generator = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, obs_dim, generator=generator, dtype=DTYPE)
    with torch.no_grad():
        old_logits = policy(obs)
    chosen = torch.distributions.Categorical(logits=old_logits).sample(generator=None) if False else None
    chosen = torch.multinomial(torch.softmax(old_logits, -1), 1, generator=generator).squeeze(-1)
    advantages = torch.randn(batch, generator=generator, dtype=DTYPE)
    old_log_probs = torch.log_softmax(old_logits, -1).gather(-1, chosen[:, None]).squeeze(-1)

    def closure() -> tuple[Tensor, Tensor]:
        logits = policy(obs)
        log_probs = torch.log_softmax(logits, -1).gather(-1, chosen[:, None]).squeeze(-1)
        surrogate = -(torch.exp(log_probs - old_log_probs) * advantages).mean()
        return surrogate, categorical_kl(old_logits, logits)

    return policy, obs, closure


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_default_optimizer_on_a_softmax_policy_matches_the_damped_closed_form(seed: int) -> None:
    policy, obs, closure = softmax_policy_problem(seed)
    theta0 = flat(policy.parameters())
    surrogate, _ = closure()
    (gradient,) = torch.autograd.grad(surrogate, [policy.logits.weight])
    g = -gradient.reshape(-1)
    damped_fisher = dense_kl_hessian(policy, obs, categorical_kl) + 0.1 * torch.eye(theta0.numel(), dtype=DTYPE)

    opt = TrustRegionOptimizer(policy.parameters(), max_kl=0.01)
    opt.step(closure)

    result = opt.last_result
    assert result.accepted
    assert result.step_fraction == 0.8**result.backtracks
    direction = torch.linalg.solve(damped_fisher, g)
    closed_form = math.sqrt(2 * 0.01 / (direction @ damped_fisher @ direction).item()) * direction
    step = flat(policy.parameters()) - theta0
    assert torch.allclose(step, result.step_fraction * closed_form, rtol=1e-7, atol=1e-12)
    assert result.step_scale == pytest.approx(math.sqrt(2 * 0.01 / (direction @ damped_fisher @ direction).item()))
    assert result.solver_reason is SolverReason.CONVERGED


def test_hessian_curvature_takes_the_newton_step_on_a_convex_quadratic() -> None:
    generator = torch.Generator().manual_seed(4)
    hessian = symmetric_matrix(log_spaced_eigenvalues(5, 50.0), generator)
    b = random_vector(5, generator)
    theta = nn.Parameter(random_vector(5, generator))
    g = b - hessian @ theta.detach()
    newton = torch.linalg.solve(hessian, g)
    max_kl = 0.5 * (g @ newton).item()  # the radius at which β = 1: the full Newton step

    def closure() -> Tensor:
        return 0.5 * theta @ hessian @ theta - b @ theta

    opt = TrustRegionOptimizer([theta], max_kl=max_kl, curvature=Hessian(), solver=DenseSolver())
    opt.step(closure)
    assert opt.last_result.accepted and opt.last_result.constraint_after is None
    assert opt.last_result.step_scale == pytest.approx(1.0, rel=1e-12)
    assert torch.allclose(theta.detach(), torch.linalg.solve(hessian, b), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- line-search guarantees


@settings(max_examples=20)
@given(
    kind=st.sampled_from(["categorical", "gaussian"]),
    seed=seeds,
    batch=st.integers(1, 16),
    obs_dim=st.integers(1, 4),
    hidden=st.integers(1, 6),
    width=st.integers(2, 4),
    log_max_kl=st.floats(-4.0, 0.0),
)
def test_accepted_steps_stay_in_the_trust_region_and_never_increase_the_loss(
    kind: str, seed: int, batch: int, obs_dim: int, hidden: int, width: int, log_max_kl: float
) -> None:
    policy, closure = policy_closure(kind, seed, batch, obs_dim, hidden, width)
    params = list(policy.parameters())
    saved = snapshot(params)
    max_kl = 10.0**log_max_kl
    opt = TrustRegionOptimizer(params, max_kl=max_kl)
    with torch.no_grad():
        loss_before, _ = closure()
    returned = opt.step(closure)

    result = opt.last_result
    assert returned.item() == loss_before.item() == result.loss_before
    with torch.no_grad():
        loss_after, kl_after = closure()
    if result.accepted:
        assert kl_after.item() <= max_kl * (1 + 1e-6)
        assert loss_after.item() < loss_before.item()
        assert (loss_after.item(), kl_after.item()) == (result.loss_after, result.kl_after)
        assert result.step_fraction == 0.8**result.backtracks
    else:
        assert result.reason in (Reason.LINE_SEARCH_EXHAUSTED, Reason.ZERO_GRADIENT)
        assert bitwise_equal(params, saved)
        assert loss_after.item() == loss_before.item()


def replay(problem: QuadraticProblem, old: list[Tensor], step: Tensor, fraction: float) -> tuple[float, float]:
    """The closure's values at ``θ_old + fraction · step`` (parameters put back afterwards)."""
    saved = snapshot(problem.params)
    with torch.no_grad():
        pieces = torch.split(step, [p.numel() for p in problem.params])
        for p, base, piece in zip(problem.params, old, pieces, strict=True):
            torch.add(base, piece.view_as(p), alpha=fraction, out=p.data)  # the same rounding as the optimizer
        loss, constraint = problem.loss_and_constraint()
        for p, s in zip(problem.params, saved, strict=True):
            p.copy_(s)
    return loss.item(), constraint.item()


@settings(max_examples=25)
@given(
    n=st.integers(1, 8),
    seed=seeds,
    ratio=st.floats(0.2, 0.9),
    log_quartic=st.floats(-1.0, 5.0),
    penalty=st.floats(0.0, 30.0),
    min_improvement_ratio=st.sampled_from([0.0, 0.1, 0.5]),
)
def test_backtracking_takes_the_first_acceptable_fraction_and_reports_it(
    n: int, seed: int, ratio: float, log_quartic: float, penalty: float, min_improvement_ratio: float
) -> None:
    problem = quadratic_problem(n, seed, quartic=10.0**log_quartic, penalty=penalty)
    recording = Recording()
    max_kl = 0.01
    search = BacktrackingLineSearch(max_backtracks=6, ratio=ratio, min_improvement_ratio=min_improvement_ratio)
    opt = TrustRegionOptimizer(
        problem.params,
        max_kl=max_kl,
        curvature=CountingCurvature(Damped(KLHessian(), 0.0), recording),
        solver=RecordingSolver(recording, max_iter=10 * n, tol=1e-12),
        line_search=search,
    )
    saved = snapshot(problem.params)
    opt.step(problem.loss_and_constraint)

    result = opt.last_result
    (solve,) = recording.solves
    assert result.curvature_products == recording.products == recording.solver_products[0]
    assert (result.solver_iterations, result.solver_reason) == (solve.iterations, solve.reason)
    assert result.gradient_norm == pytest.approx(problem.gradient.norm().item(), rel=1e-12)
    assert result.step_scale == pytest.approx(math.sqrt(2 * max_kl / solve.curvature), rel=1e-15)
    assert result.expected_improvement == pytest.approx(result.step_scale * solve.gradient_dot, rel=1e-15)
    full_step = result.step_scale * solve.direction
    assert torch.allclose(full_step, problem.closed_form_step(max_kl), rtol=1e-8, atol=1e-12)

    def acceptable(fraction: float) -> bool:
        loss, constraint = replay(problem, saved, full_step, fraction)
        improvement = -loss
        required = min_improvement_ratio * fraction * result.expected_improvement
        return constraint <= max_kl and improvement > 0 and improvement >= required

    for rejected in range(result.backtracks if result.accepted else 7):
        assert not acceptable(ratio**rejected)
    if result.accepted:
        assert result.step_fraction == ratio**result.backtracks
        assert result.closure_calls == result.backtracks + 2
        assert acceptable(result.step_fraction)
        # θ = θ_old + tΔθ is rounded at |θ_old|'s scale, so the displacement is exact to a few ulps of θ_old
        rounding = 4 * torch.finfo(full_step.dtype).eps * max(p.abs().max().item() for p in saved)
        torch.testing.assert_close(
            problem.displacement().detach(), result.step_fraction * full_step, rtol=1e-12, atol=rounding
        )
        loss, constraint = replay(problem, saved, full_step, result.step_fraction)
        assert (result.loss_after, result.constraint_after) == (loss, constraint)
        assert result.actual_improvement == pytest.approx(-loss, rel=1e-12)
    else:
        assert result.reason is Reason.LINE_SEARCH_EXHAUSTED
        assert (result.step_fraction, result.backtracks, result.closure_calls) == (0.0, 6, 8)
        assert bitwise_equal(problem.params, saved)


# ----------------------------------------------------------------------------- failed searches restore bitwise


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_search_that_never_improves_restores_the_parameters_bitwise(dtype: torch.dtype) -> None:
    problem = quadratic_problem(7, seed=3, dtype=dtype, penalty=1e4)  # the loss rises at every trial point
    saved = snapshot(problem.params)
    opt = TrustRegionOptimizer(problem.params, max_kl=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plain rejection is not a fault: no warning
        returned = opt.step(problem.loss_and_constraint)

    result = opt.last_result
    assert not result.accepted and result.reason is Reason.LINE_SEARCH_EXHAUSTED
    assert (result.backtracks, result.closure_calls, result.step_fraction) == (10, 12, 0.0)
    assert bitwise_equal(problem.params, saved)
    assert returned.dtype == dtype and returned.item() == 0.0
    assert opt.state[problem.params[0]]["rejected_steps"] == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_violated_trust_region_without_backtracks_restores_the_parameters_bitwise(dtype: torch.dtype) -> None:
    problem = quadratic_problem(5, seed=5, dtype=dtype, quartic=1e3)
    saved = snapshot(problem.params)
    opt = TrustRegionOptimizer(
        problem.params,
        max_kl=1e-6,
        curvature=KLHessian(),
        line_search=BacktrackingLineSearch(max_backtracks=0),
    )
    opt.step(problem.loss_and_constraint)
    result = opt.last_result
    assert not result.accepted and result.reason is Reason.LINE_SEARCH_EXHAUSTED
    assert result.constraint_after > 1e-6
    assert (result.backtracks, result.closure_calls) == (0, 2)
    assert bitwise_equal(problem.params, saved)


def test_no_line_search_takes_exactly_the_scaled_step_even_outside_the_region() -> None:
    problem = quadratic_problem(6, seed=7, quartic=1e3)
    opt = TrustRegionOptimizer(
        problem.params, max_kl=0.01, curvature=KLHessian(), solver=DenseSolver(), line_search=NoLineSearch()
    )
    opt.step(problem.loss_and_constraint)
    result = opt.last_result
    assert result.accepted
    assert (result.step_fraction, result.backtracks, result.closure_calls) == (1.0, 0, 2)
    assert torch.allclose(problem.displacement().detach(), problem.closed_form_step(0.01), rtol=1e-10, atol=1e-13)
    assert result.constraint_after > 0.01  # measured and reported, not enforced


# ----------------------------------------------------------------------------- state and bookkeeping


def test_state_dict_round_trip_keeps_max_kl_and_step_counters() -> None:
    problem = quadratic_problem(4, seed=9)
    opt = TrustRegionOptimizer(problem.params, max_kl=0.02, curvature=KLHessian(), solver=DenseSolver())
    opt.step(problem.loss_and_constraint)
    rejected = int(not opt.last_result.accepted)
    problem.restart()  # the constraint is the KL from the step's own θ_old
    opt.step(problem.loss_and_constraint)
    rejected += int(not opt.last_result.accepted)

    def never_improves() -> tuple[Tensor, Tensor]:
        loss, constraint = problem.loss_and_constraint()
        return (loss if torch.is_grad_enabled() else loss + 1.0), constraint  # trials run under no_grad

    problem.restart()
    opt.step(never_improves)
    assert not opt.last_result.accepted

    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    restored = TrustRegionOptimizer(problem.params, max_kl=0.5)
    restored.load_state_dict(torch.load(buffer))

    assert restored.param_groups[0]["max_kl"] == 0.02
    state = restored.state[problem.params[0]]
    assert (state["step"], state["rejected_steps"]) == (3, rejected + 1)
    problem.restart()
    restored.step(problem.loss_and_constraint)
    assert state["step"] == 4


def test_reduce_sees_the_gradient_every_product_and_the_closure_scalars() -> None:
    problem = quadratic_problem(6, seed=11, quartic=1e3)
    seen: list[tuple[int, ...]] = []

    def reduce(tensor: Tensor) -> Tensor:
        seen.append(tuple(tensor.shape))
        return tensor

    opt = TrustRegionOptimizer(problem.params, max_kl=0.01, curvature=KLHessian(), reduce=reduce)
    opt.step(problem.loss_and_constraint)
    result = opt.last_result
    assert seen.count((6,)) == 1 + result.curvature_products  # gradient + products
    assert seen.count((2,)) == result.closure_calls  # (loss, constraint) once per call
    assert len(seen) == 1 + result.curvature_products + result.closure_calls


# ----------------------------------------------------------------------------- SteihaugCG in the KL-constrained step


def kl_problem(n: int = 20, seed: int = 0):
    """Loss ``-cᵀx``, constraint ``½ (x - x₀)ᵀF(x - x₀)``: KLHessian gives ``F``, the TRPO step is closed form."""
    generator = torch.Generator().manual_seed(seed)
    fisher = symmetric_matrix(torch.logspace(-1, 2, n, dtype=DTYPE), generator)
    direction = torch.randn(n, generator=generator, dtype=DTYPE)
    x = torch.zeros(n, dtype=DTYPE, requires_grad=True)
    anchor = x.detach().clone()

    def closure():
        delta = x - anchor
        return -(direction @ x), 0.5 * delta @ fisher @ delta

    return x, closure, fisher, direction


@pytest.mark.parametrize("max_kl", [1e-4, 1e-2, 1.0])
def test_steihaug_in_the_kl_constrained_step_stays_on_the_kl_boundary(max_kl: float) -> None:
    x, closure, fisher, _ = kl_problem()
    opt = TrustRegionOptimizer(
        [x], max_kl, curvature=KLHessian(), solver=SteihaugCG(max_iter=10), line_search=NoLineSearch()
    )
    opt.step(closure)
    step = x.detach()
    assert 0.5 * (step @ fisher @ step).item() == pytest.approx(max_kl, rel=1e-9)
    assert opt.last_result.solver_reason in (SolverReason.BOUNDARY, SolverReason.MAX_ITERATIONS)


def test_steihaug_in_the_kl_step_stops_early_where_cg_runs_on() -> None:
    """Small δ: the iterates cross ½ sᵀFs = δ after few products, and the step still gains."""
    x, closure, _, direction = kl_problem()
    steihaug = TrustRegionOptimizer([x], 1e-4, curvature=KLHessian(), solver=SteihaugCG(max_iter=10))
    steihaug.step(closure)
    steihaug_gain, steihaug_products = (direction @ x).item(), steihaug.last_result.curvature_products
    with torch.no_grad():
        x.zero_()
    cg = TrustRegionOptimizer([x], 1e-4, curvature=KLHessian(), solver=ConjugateGradient(max_iter=10))
    cg.step(closure)
    assert steihaug.last_result.solver_reason is SolverReason.BOUNDARY
    assert steihaug_products < cg.last_result.curvature_products == 10
    assert 0 < steihaug_gain <= (direction @ x).item() * (1 + 1e-12)


def test_steihaug_with_room_is_the_cg_step_in_the_kl_problem() -> None:
    """Large δ: the Newton point lies inside, Steihaug runs like CG and β rescales as before."""
    x, closure, _, _ = kl_problem(n=6)
    TrustRegionOptimizer(
        [x], 1e6, curvature=KLHessian(), solver=SteihaugCG(tol=1e-12), line_search=NoLineSearch()
    ).step(closure)
    ours = x.detach().clone()
    with torch.no_grad():
        x.zero_()
    TrustRegionOptimizer(
        [x], 1e6, curvature=KLHessian(), solver=ConjugateGradient(max_iter=6, tol=1e-12), line_search=NoLineSearch()
    ).step(closure)
    torch.testing.assert_close(ours, x.detach(), rtol=1e-9, atol=1e-9)


def test_the_kl_constrained_optimizer_keeps_no_radius_state() -> None:
    x, closure, _, _ = kl_problem()
    opt = TrustRegionOptimizer([x], 0.01, curvature=KLHessian())
    saved = snapshot([x])
    opt.step(closure)
    assert not bitwise_equal([x], saved)
    assert set(opt.state[x]) == {"step", "rejected_steps"}
    assert type(opt.last_result) is KLStepResult and not isinstance(opt.last_result, RadiusStepResult)
    assert not hasattr(opt.last_result, "radius")


# ----------------------------------------------------------------------------- bad input


def make(params=None, **kw) -> TrustRegionOptimizer:
    return TrustRegionOptimizer(params if params is not None else [nn.Parameter(torch.zeros(2, dtype=DTYPE))], **kw)


@pytest.mark.parametrize("max_kl", [0.0, -0.01, math.nan, math.inf, -math.inf, True, "0.01", None])
def test_rejects_bad_max_kl(max_kl: object) -> None:
    with pytest.raises(ValueError, match="max_kl must be a finite number > 0"):
        make(max_kl=max_kl)


def test_rejects_a_bad_max_kl_in_a_param_group() -> None:
    with pytest.raises(ValueError, match="max_kl"):
        make([{"params": [nn.Parameter(torch.zeros(2))], "max_kl": -1.0}])


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.5, 1.5, math.nan])
def test_backtracking_rejects_bad_ratio(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"ratio must be in \(0\.0, 1\.0\)"):
        BacktrackingLineSearch(ratio=ratio)


@pytest.mark.parametrize("max_backtracks", [-1, 1.5, True, None])
def test_backtracking_rejects_bad_max_backtracks(max_backtracks: object) -> None:
    with pytest.raises(ValueError, match="max_backtracks must be an integer >= 0"):
        BacktrackingLineSearch(max_backtracks=max_backtracks)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-0.1, 1.0, 2.0, math.nan])
def test_backtracking_rejects_bad_min_improvement_ratio(value: float) -> None:
    with pytest.raises(ValueError, match=r"min_improvement_ratio must be in \[0\.0, 1\.0\)"):
        BacktrackingLineSearch(min_improvement_ratio=value)


def test_backtracking_defaults() -> None:
    search = BacktrackingLineSearch()
    assert (search.max_backtracks, search.ratio, search.min_improvement_ratio) == (10, 0.8, 0.0)


def test_rejects_two_param_groups() -> None:
    groups = [{"params": [nn.Parameter(torch.zeros(2))]}, {"params": [nn.Parameter(torch.zeros(3))]}]
    with pytest.raises(ValueError, match="one parameter group"):
        make(groups)
    opt = make()
    with pytest.raises(ValueError, match="one parameter group"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))]})


def test_rejects_bad_params() -> None:
    with pytest.raises(TypeError, match="floating point"):
        make([torch.zeros(2, dtype=torch.int64)])
    with pytest.raises(ValueError, match="one dtype and device"):
        make([nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, dtype=DTYPE))])
    with pytest.raises(ValueError, match="empty"):
        make([])


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("curvature", ConjugateGradient()),
        ("curvature", KLHessian),
        ("solver", KLHessian()),
        ("solver", lambda operator, rhs: rhs),
        ("line_search", "backtracking"),
        ("line_search", DenseSolver()),
    ],
)
def test_rejects_wrong_component_types(argument: str, value: object) -> None:
    with pytest.raises(TypeError, match=f"{argument} must be a"):
        make(**{argument: value})


def test_rejects_a_non_callable_reduce() -> None:
    with pytest.raises(TypeError, match="reduce must be callable"):
        make(reduce=1.0)


def test_default_components() -> None:
    opt = make()
    assert isinstance(opt.curvature, Damped) and isinstance(opt.curvature.curvature, KLHessian)
    assert opt.curvature.damping == 0.1
    assert isinstance(opt.solver, ConjugateGradient) and opt.solver.max_iter == 10
    assert isinstance(opt.line_search, BacktrackingLineSearch)
    assert opt.param_groups[0]["max_kl"] == 0.01


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ("a string", "closure must return the loss as a scalar tensor"),
        ((1, 2, 3), "closure must return the loss as a scalar tensor"),
        ("three tensors", "closure must return the loss as a scalar tensor"),
        ("vector loss", "closure's loss must be a scalar tensor"),
        ("vector constraint", "closure's constraint must be a scalar tensor"),
        ("detached loss", "does not depend on the parameters"),
        (None, "closure must return the loss as a scalar tensor"),
    ],
)
def test_rejects_closures_that_return_the_wrong_thing(returned: object, message: str) -> None:
    theta = nn.Parameter(torch.ones(3, dtype=DTYPE))
    outputs = {
        "three tensors": lambda: (theta.sum(), theta.sum(), theta.sum()),
        "vector loss": lambda: (theta * 2, theta.sum()),
        "vector constraint": lambda: (theta.sum(), theta * 2),
        "detached loss": lambda: theta.sum().detach(),
    }
    closure = outputs.get(returned, lambda: returned) if isinstance(returned, str | None) else (lambda: returned)
    opt = make([theta])
    with pytest.raises(TypeError, match=message):
        opt.step(closure)
    assert torch.equal(theta.detach(), torch.ones(3, dtype=DTYPE))


def test_a_constraint_without_graph_is_reported_as_bad_input() -> None:
    # KLHessian differentiates the constraint twice: a detached KL is a mistake in the closure, and the error
    # must say so (not autograd's "element 0 of tensors does not require grad").
    policy, closure = policy_closure("categorical", seed=0, batch=4, obs_dim=2, hidden=3, width=3)

    def detached_constraint() -> tuple[Tensor, Tensor]:
        loss, constraint = closure()
        return loss, constraint.detach()

    params = list(policy.parameters())
    saved = snapshot(params)
    opt = TrustRegionOptimizer(params, max_kl=0.01)
    with pytest.raises((TypeError, ValueError), match="constraint"):
        opt.step(detached_constraint)
    assert bitwise_equal(params, saved)


def test_step_needs_a_closure() -> None:
    opt = make()
    with pytest.raises(TypeError):
        opt.step()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="needs a closure"):
        opt.step(None)  # type: ignore[arg-type]
