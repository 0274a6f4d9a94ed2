"""Radius controls: the update rules and their typed state, and TrustRegionMinimizer as trust-region Newton-CG."""

from __future__ import annotations

import copy
import io
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trustregion_helpers import DTYPE, bitwise_equal, symmetric_matrix

from trustregion import (
    CategoricalFisher,
    Curvature,
    GaussNewton,
    Hessian,
    LevenbergMarquardt,
    LinearOperator,
    RadiusStepResult,
    Reason,
    SquaredError,
    SteihaugCG,
    StepProblem,
    TrustRadius,
    TrustRegionMinimizer,
)
from trustregion.control import DampingState, TrustRadiusState
from trustregion.result import SolverReason
from trustregion.solvers import Ball

seeds = st.integers(0, 2**31 - 1)


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def indefinite_quadratic(x: torch.Tensor) -> torch.Tensor:
    """``θ1² + 3θ1θ2 + 2θ2²``: Hessian ``[[2, 3], [3, 4]]`` (eigenvalues 3 ± √10), saddle at 0, unbounded below."""
    return x[0] ** 2 + 3 * x[0] * x[1] + 2 * x[1] ** 2


def symmetric_saddle(x: torch.Tensor) -> torch.Tensor:
    """``θ1² - θ2² + θ2⁴``: saddle at 0, minima at ``(0, ±1/√2)`` with value ``-1/4``."""
    return x[0] ** 2 - x[1] ** 2 + x[1] ** 4


class RecordingCurvature(Curvature):
    """Wraps a curvature and records the parameters at every build."""

    def __init__(self, inner: Curvature) -> None:
        self.inner = inner
        self.needs_loss_graph = inner.needs_loss_graph
        self.built_at: list[torch.Tensor] = []

    def build(self, problem: StepProblem) -> LinearOperator:
        self.built_at.append(torch.cat([p.detach().reshape(-1).clone() for p in problem.params]))
        return self.inner.build(problem)


def minimise(function, start, *, steps: int = 200, controller=None, curvature=None, solver=None):
    """Run the minimizer until CONVERGED or ``steps``; return the parameter, the minimizer and the records."""
    x = torch.tensor(start, dtype=DTYPE, requires_grad=True)
    opt = TrustRegionMinimizer(
        [x], curvature=curvature or Hessian(function), control=controller or TrustRadius(), solver=solver
    )
    records = []
    for _ in range(steps):
        before = x.detach().clone()
        opt.step(lambda: function(x))
        records.append((before, x.detach().clone(), opt.last_result))
        if opt.last_result.reason is Reason.CONVERGED:
            break
    return x, opt, records


# ----------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("radius", "ratio", "step_norm", "expected"),
    [
        (1.0, 0.1, 1.0, 0.25),  # ρ < 1/4: shrink by 4
        (1.0, -math.inf, 0.0, 0.25),  # a failed or non-finite step shrinks too
        (1.0, 0.5, 1.0, 1.0),  # 1/4 <= ρ <= 3/4: keep
        (1.0, 0.9, 1.0, 2.0),  # ρ > 3/4 on the boundary: double
        (1.0, 0.9, 0.5, 1.0),  # ρ > 3/4 inside: keep
        (3.0, 0.9, 3.0, 4.0),  # capped at max_radius
    ],
)
def test_trust_radius_follows_nocedal_wright_algorithm_4_1(radius, ratio, step_norm, expected) -> None:
    controller = TrustRadius(initial_radius=1.0, max_radius=4.0)
    assert controller.update(TrustRadiusState(radius), ratio, step_norm) == TrustRadiusState(expected)


def test_steps_are_taken_only_above_eta() -> None:
    controller = TrustRadius(eta=0.15)
    assert not controller.accept(0.15) and controller.accept(0.1500001) and not controller.accept(-math.inf)


@pytest.mark.parametrize(
    ("ratio", "expected_damping", "expected_growth"),
    [
        (0.9, 1 - 0.8**3, 2.0),  # a good step: μ · max(1/3, 1 - (2ρ - 1)³)
        (0.99, 1 / 3, 2.0),  # at most a factor 3 smaller
        (0.5, 1.0, 2.0),
        (0.1, 1 + 0.8**3, 2.0),  # a poor but accepted step (η = 0) raises μ a little
        (0.0, 4.0, 8.0),  # rejected: μ · ν, and ν doubles
        (-math.inf, 4.0, 8.0),
    ],
)
def test_levenberg_marquardt_follows_nielsen(ratio: float, expected_damping: float, expected_growth: float) -> None:
    state = LevenbergMarquardt().update(DampingState(1.0, 4.0), ratio, 1.0)
    assert isinstance(state, DampingState)
    assert state.damping == pytest.approx(expected_damping)
    assert state.growth == expected_growth


def test_levenberg_marquardt_damping_stays_in_its_bounds() -> None:
    controller = LevenbergMarquardt(1.0, min_damping=0.5, max_damping=1.5)
    assert controller.update(DampingState(1.0, 2.0), 0.99, 1.0).damping == 0.5
    assert controller.update(DampingState(1.0, 2.0), -1.0, 1.0).damping == 1.5


def test_the_state_sets_the_region_and_the_damping() -> None:
    """``init`` gives the first state; ``region`` and ``damping`` read it (a radius, or a shift ``μ``)."""
    trust_radius = TrustRadius(initial_radius=2.0, metric="operator")
    assert trust_radius.init() == TrustRadiusState(2.0)
    assert trust_radius.region(TrustRadiusState(0.5)) == Ball(0.5, "operator")
    assert trust_radius.damping(TrustRadiusState(0.5)) == 0.0
    levenberg_marquardt = LevenbergMarquardt(initial_damping=0.3)
    assert levenberg_marquardt.init() == DampingState(0.3, 2.0)
    assert levenberg_marquardt.region(DampingState(0.3)) == Ball(math.inf, "euclidean")
    assert levenberg_marquardt.damping(DampingState(0.7, 8.0)) == 0.7


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TrustRadius(initial_radius=0.0), "initial_radius"),
        (lambda: TrustRadius(initial_radius=2.0, max_radius=1.0), "max_radius"),
        (lambda: TrustRadius(eta=0.25), "eta"),
        (lambda: TrustRadius(metric="kl"), "metric"),
        (lambda: TrustRadius(gtol=-1.0), "gtol"),
        (lambda: TrustRadius(probe_iterations=0), "probe_iterations"),
        (lambda: LevenbergMarquardt(initial_damping=-1.0), "initial_damping"),
        (lambda: LevenbergMarquardt(initial_damping=1.0, max_damping=0.5), "initial_damping"),
        (lambda: LevenbergMarquardt(eta=0.3), "eta"),
    ],
)
def test_bad_arguments_name_themselves(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


# ----------------------------------------------------------------------------- Newton-CG


def test_newton_cg_minimises_rosenbrock_and_reports_convergence() -> None:
    x, opt, records = minimise(rosenbrock, [-1.2, 1.0], controller=TrustRadius(gtol=1e-8))
    final = records[-1][2]
    assert final.reason is Reason.CONVERGED and not final.accepted
    assert final.gradient_norm <= 1e-8
    assert isinstance(final, RadiusStepResult)
    assert final.min_curvature > 0  # the probe saw the positive definite Hessian at (1, 1)
    torch.testing.assert_close(x.detach(), torch.ones(2, dtype=DTYPE), rtol=0, atol=1e-8)
    assert isinstance(opt.solver, SteihaugCG)  # the minimizer's default solver
    assert any(not r.accepted for _, _, r in records[:-1])  # the run exercised rejections


def test_newton_cg_works_in_float32() -> None:
    x = torch.tensor([-1.2, 1.0], requires_grad=True)
    opt = TrustRegionMinimizer([x], curvature=Hessian(rosenbrock), control=TrustRadius(gtol=1e-3))
    for _ in range(100):
        opt.step(lambda: rosenbrock(x))
        if opt.last_result.reason is Reason.CONVERGED:
            break
    assert opt.last_result.reason is Reason.CONVERGED
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.detach(), torch.ones(2), rtol=0, atol=1e-2)


def random_quartic(seed: int, n: int):
    """``½ xᵀHx + ¼ c ‖x‖⁴ + bᵀx`` with ``H`` indefinite: bounded below, with saddles."""
    generator = torch.Generator().manual_seed(seed)
    eigenvalues = torch.linspace(-2.0, 3.0, n, dtype=DTYPE)
    hessian = symmetric_matrix(eigenvalues, generator)
    linear = 0.1 * torch.randn(n, generator=generator, dtype=DTYPE)
    start = torch.randn(n, generator=generator, dtype=DTYPE)

    def function(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x @ hessian @ x + 0.25 * (x @ x) ** 2 + linear @ x

    return function, start


@settings(max_examples=12)
@given(seeds, st.integers(2, 8), st.sampled_from([0.0, 1.0]))
def test_step_properties_on_random_nonconvex_problems(seed: int, n: int, start_scale: float) -> None:
    """Every step within the radius, accepted steps decrease the loss, rejected ones restore bitwise;
    the loop finishes, and convergence is only reported where the Hessian is positive semidefinite."""
    function, start = random_quartic(seed, n)
    controller = TrustRadius(gtol=1e-9, probe_iterations=n)
    x, _, records = minimise(function, (start_scale * start).tolist(), steps=100, controller=controller)
    for before, after, result in records:
        moved = (after - before).norm().item()
        if result.accepted:  # monotone up to the loss's rounding level (the ratio's safeguard)
            assert result.loss_after <= result.loss_before + 10 * torch.finfo(DTYPE).eps * max(
                1, abs(result.loss_before)
            )
            assert moved <= result.radius * (1 + 1e-9)
        else:
            assert moved == 0.0
        assert result.curvature_products <= 10 * n + controller.probe_iterations  # SteihaugCG cap + probe
    final = records[-1][2]
    assert final.reason is Reason.CONVERGED
    hessian = torch.autograd.functional.hessian(function, x.detach())
    assert torch.linalg.eigvalsh(hessian)[0].item() >= -1e-6


def test_curvature_is_built_only_at_accepted_points() -> None:
    curvature = RecordingCurvature(Hessian(rosenbrock))
    _, _, records = minimise(rosenbrock, [-1.2, 1.0], curvature=curvature, controller=TrustRadius(gtol=1e-8))
    iterates = [records[0][0]] + [after for _, after, result in records if result.accepted]
    visited = {tuple(p.tolist()) for p in iterates}
    assert all(tuple(p.tolist()) in visited for p in curvature.built_at)
    rejected_trials = [before for before, _, result in records if result.reason is Reason.INSUFFICIENT_DECREASE]
    assert rejected_trials, "the run must contain rejected steps for this test to mean anything"
    assert len(curvature.built_at) == len(records)  # one build per step, at its (accepted) start point


def test_rejected_steps_restore_bitwise_and_shrink_the_radius() -> None:
    _, _, records = minimise(rosenbrock, [-1.2, 1.0], controller=TrustRadius(gtol=1e-8))
    rejected = [(i, r) for i, (_, _, r) in enumerate(records) if r.reason is Reason.INSUFFICIENT_DECREASE]
    assert rejected
    for i, result in rejected:
        assert result.improvement_ratio <= 0.15
        assert records[i + 1][2].radius == pytest.approx(0.25 * result.radius)


# ----------------------------------------------------------------------------- saddles and unbounded problems


def test_saddle_start_with_zero_gradient_escapes() -> None:
    controller = TrustRadius(initial_radius=0.5, gtol=1e-8)
    x, _, records = minimise(symmetric_saddle, [0.0, 0.0], controller=controller)
    first = records[0][2]
    assert first.gradient_norm == 0.0
    assert first.accepted and first.solver_reason is SolverReason.NEGATIVE_CURVATURE
    assert first.min_curvature == pytest.approx(-2.0)
    assert first.step_norm == pytest.approx(0.5)
    assert first.loss_after == pytest.approx(-0.25 + 0.0625)  # moved along ±e₂, the negative-curvature axis
    assert records[-1][2].reason is Reason.CONVERGED
    assert symmetric_saddle(x).item() == pytest.approx(-0.25, abs=1e-12)


def test_symmetric_approach_to_a_saddle_is_not_reported_as_convergence() -> None:
    """From ``(1, 0)`` the gradient stays along ``e₁``: Newton-CG walks into the saddle; the probe gets it out."""
    x, _, records = minimise(symmetric_saddle, [1.0, 0.0], controller=TrustRadius(gtol=1e-8))
    assert any(r.solver_reason is SolverReason.NEGATIVE_CURVATURE and r.accepted for _, _, r in records)
    assert records[-1][2].reason is Reason.CONVERGED
    assert abs(x[1].item()) == pytest.approx(1 / math.sqrt(2), abs=1e-8)


@pytest.mark.parametrize("start", [[0.0, 0.0], [1.0, 0.5], [-0.3, 0.2]])
def test_unbounded_indefinite_quadratic_never_converges(start: list[float]) -> None:
    _, _, records = minimise(indefinite_quadratic, start, steps=40, controller=TrustRadius(gtol=1e-6))
    assert all(r.reason is not Reason.CONVERGED for _, _, r in records)
    losses = [r.loss_after for _, _, r in records if r.accepted]
    assert all(b < a for a, b in itertools.pairwise(losses))
    assert losses[-1] < -1e5  # the radius grows to its cap and the loss keeps falling


def test_positive_semidefinite_curvature_converges_without_a_probe() -> None:
    """Gauss-Newton is PSD by construction: at ‖g‖ <= gtol the step reports CONVERGED with no product."""
    target = torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE)
    x = torch.zeros(3, dtype=DTYPE, requires_grad=True)
    curvature = GaussNewton(lambda p: p - target, SquaredError())
    opt = TrustRegionMinimizer([x], curvature=curvature, control=TrustRadius(initial_radius=10.0))
    closure = lambda: 0.5 * ((x - target) ** 2).sum()  # noqa: E731
    opt.step(closure)
    assert opt.last_result.accepted
    opt.step(closure)
    assert opt.last_result.reason is Reason.CONVERGED and opt.last_result.curvature_products == 0
    assert math.isnan(opt.last_result.min_curvature)  # not probed


def test_operator_metric_needs_a_positive_semidefinite_curvature() -> None:
    x = torch.tensor([1.0, 2.0], dtype=DTYPE, requires_grad=True)
    for controller in (TrustRadius(metric="operator"), LevenbergMarquardt()):
        opt = TrustRegionMinimizer([x], curvature=Hessian(), control=controller)
        with pytest.raises(ValueError, match="positive semidefinite"):
            opt.step(lambda: rosenbrock(x))


def test_operator_metric_bounds_the_quadratic_kl() -> None:
    """``TrustRadius(metric="operator")`` with a Gauss-Newton Fisher: ``ΔθᵀAΔθ <= Δ²`` for every step."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(64, 5, generator=generator, dtype=DTYPE)
    labels = torch.randint(0, 3, (64,), generator=generator)
    weight = torch.zeros(5, 3, dtype=DTYPE, requires_grad=True)
    logits = lambda w: features @ w  # noqa: E731
    curvature = GaussNewton(logits, CategoricalFisher())
    opt = TrustRegionMinimizer([weight], curvature=curvature, control=TrustRadius(0.1, metric="operator"))
    for _ in range(5):
        before = weight.detach().clone()
        old_logits = logits(before)
        fisher = torch.autograd.functional.hessian(
            lambda w, old=old_logits: _categorical_kl(old, logits(w.view(5, 3))), before.reshape(-1)
        )
        opt.step(lambda: torch.nn.functional.cross_entropy(logits(weight), labels))
        step = (weight.detach() - before).reshape(-1)
        radius = opt.last_result.radius
        assert (step @ fisher @ step).item() <= radius**2 * (1 + 1e-8)
    assert opt.last_result.loss_after < math.log(3)


def _categorical_kl(old_logits: torch.Tensor, new_logits: torch.Tensor) -> torch.Tensor:
    old = torch.log_softmax(old_logits, -1)
    return (old.exp() * (old - torch.log_softmax(new_logits, -1))).sum(-1).mean()


# ----------------------------------------------------------------------------- state


def test_radius_survives_state_dict_round_trip() -> None:
    x, opt, _ = minimise(rosenbrock, [-1.2, 1.0], steps=6)
    radius = opt.control_state.radius
    assert radius != 1.0  # it moved, so the round trip carries information
    assert opt.state[x]["control"] == TrustRadiusState(radius)
    packed = opt.state_dict()
    assert packed["state"][0]["control"] == {"radius": radius}  # a plain dict: torch.load(weights_only=True) reads it
    assert opt.state[x]["control"] == TrustRadiusState(radius)  # packing left the live state typed
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    buffer.seek(0)
    saved_state, saved_x = torch.load(buffer, weights_only=True), x.detach().clone()

    def continue_run(optimizer, parameter):
        trajectory = []
        for _ in range(8):
            optimizer.step(lambda: rosenbrock(parameter))
            trajectory.append((parameter.detach().clone(), optimizer.last_result.radius))
        return trajectory

    expected = continue_run(opt, x)
    y = saved_x.clone().requires_grad_()
    restored = TrustRegionMinimizer([y], curvature=Hessian(rosenbrock), control=TrustRadius())
    restored.load_state_dict(copy.deepcopy(saved_state))
    assert restored.state[y]["control"] == TrustRadiusState(radius) == restored.control_state
    actual = continue_run(restored, y)
    for (p, r), (q, s) in zip(expected, actual, strict=True):
        assert bitwise_equal([p], [q]) and r == s
    fresh = TrustRegionMinimizer([saved_x.clone().requires_grad_()], curvature=Hessian(rosenbrock))
    assert "control" not in fresh.state_dict()["state"].get(0, {})
    assert fresh.control_state == TrustRadiusState(1.0)
    other = TrustRegionMinimizer([saved_x.clone().requires_grad_()], control=LevenbergMarquardt())
    with pytest.raises(ValueError, match="DampingState"):  # a radius is not a damping
        other.load_state_dict(copy.deepcopy(saved_state))
