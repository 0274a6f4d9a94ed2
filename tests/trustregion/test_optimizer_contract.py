"""The torch.optim contract of both optimizers, and the shape the redesign promised (issue 9).

* ``copy.deepcopy`` and ``pickle`` keep every component, and the copy steps bit for bit like the original;
* ``state_dict()`` / ``load_state_dict()`` round trip, the minimizer's typed control state included;
* an exception anywhere inside a step (the closure at a trial point, ``KeyboardInterrupt``, a curvature
  product) leaves the parameters bit for bit as they were, and propagates;
* a step that is refused (zero gradient, a zero improvement, an unusable direction) changes nothing;
* ``step(closure, curvature=...)`` uses the per-step curvature;
* the surface: two ``torch.optim.Optimizer`` classes, no radius control in ``TrustRegionOptimizer``, no
  function longer than 50 lines, a message for every ``Reason``.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import math
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Categorical
from trustregion_helpers import DTYPE, MLP, categorical_kl, seeded

import trustregion
from trustregion import (
    BacktrackingLineSearch,
    CategoricalFisher,
    ConjugateGradient,
    Curvature,
    Damped,
    DenseSolver,
    GaussNewton,
    Hessian,
    KLHessian,
    LevenbergMarquardt,
    LinearOperator,
    NoLineSearch,
    Reason,
    ResidualGaussNewton,
    Solver,
    SquaredError,
    SteihaugCG,
    TrustRadius,
    TrustRegionMinimizer,
    TrustRegionOptimizer,
)
from trustregion.control import DampingState, TrustRadiusState
from trustregion.result import SolverReason, SolverResult
from trustregion.search import SearchProblem, TrialPoint

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Boom(Exception):
    """Raised on purpose inside a step."""


def snapshot(params) -> list[Tensor]:
    return [p.detach().clone() for p in params]


def bitwise_equal(params, saved) -> bool:
    return all(torch.equal(p.detach(), s) for p, s in zip(params, saved, strict=True))


def same_values(a: object, b: object) -> bool:
    """Dataclass equality with NaN equal to NaN (results carry NaN for fields a step did not fill)."""
    if a is None or b is None:
        return a is b
    left, right = dataclasses.astuple(a), dataclasses.astuple(b)
    return all(
        x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        for x, y in zip(left, right, strict=True)
    )


# ----------------------------------------------------------------------------- problems bound to a model

POLICY_OBS = torch.randn(24, 3, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
ADVANTAGES = torch.randn(24, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
ACTIONS = torch.randint(0, 3, (24,), generator=torch.Generator().manual_seed(2))
REGRESSION_X = torch.randn(20, 3, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
REGRESSION_Y = torch.sin(REGRESSION_X.sum(-1, keepdim=True))


def policy() -> nn.Module:
    return seeded(lambda: MLP(3, 5, 3), 0)


def trpo_closure(model: nn.Module) -> Callable[[], tuple[Tensor, Tensor]]:
    """TRPO's ``(surrogate, mean KL)`` against the model's current outputs (θ_old = where it is called)."""
    with torch.no_grad():
        old = model(POLICY_OBS)
    old_log_prob = Categorical(logits=old).log_prob(ACTIONS)

    def closure() -> tuple[Tensor, Tensor]:
        logits = model(POLICY_OBS)
        ratio = torch.exp(Categorical(logits=logits).log_prob(ACTIONS) - old_log_prob)
        return -(ratio * ADVANTAGES).mean(), categorical_kl(old, logits)

    return closure


def regressor() -> nn.Module:
    return seeded(lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)), 1)


def regression_closure(model: nn.Module) -> Callable[[], Tensor]:
    return lambda: 0.5 * (model(REGRESSION_X) - REGRESSION_Y).square().mean()


def passthrough(tensor: Tensor) -> Tensor:
    """A module-level ``reduce`` (picklable), as a data-parallel all-reduce is."""
    return tensor.clone()


def closure_for(model: nn.Module) -> Callable[[], object]:
    return trpo_closure(model) if isinstance(model, MLP) else regression_closure(model)


CONFIGURATIONS: dict[str, Callable[[], tuple[nn.Module, torch.optim.Optimizer]]] = {}


def configuration(name: str):
    def register(factory):
        CONFIGURATIONS[name] = factory
        return factory

    return register


@configuration("trpo-default")
def _trpo_default():
    model = policy()
    return model, TrustRegionOptimizer(model.parameters(), 0.01)


@configuration("npg-gauss_newton-layerwise-steihaug")
def _npg_layerwise():
    model = policy()
    curvature = GaussNewton.for_module(model, POLICY_OBS, CategoricalFisher(), layerwise=True)
    opt = TrustRegionOptimizer(
        model.parameters(),
        0.02,
        curvature=Damped(curvature, 1e-2),
        solver=SteihaugCG(max_iter=8),
        line_search=NoLineSearch(),
        reduce=passthrough,
    )
    return model, opt


@configuration("trpo-gauss_newton-autograd-dense")
def _trpo_autograd_dense():
    model = policy()
    curvature = GaussNewton.for_module(model, POLICY_OBS, CategoricalFisher(), layerwise=False)
    line_search = BacktrackingLineSearch(max_backtracks=5, ratio=0.5, min_improvement_ratio=0.1)
    opt = TrustRegionOptimizer(
        model.parameters(), 0.01, curvature=Damped(curvature, 0.1), solver=DenseSolver(), line_search=line_search
    )
    return model, opt


@configuration("newton_cg-trust_radius")
def _newton_cg():
    model = regressor()
    return model, TrustRegionMinimizer(
        model.parameters(), curvature=Hessian(), solver=SteihaugCG(), control=TrustRadius(0.5)
    )


@configuration("gauss_newton-levenberg_marquardt")
def _levenberg_marquardt():
    model = regressor()
    curvature = GaussNewton.for_module(model, REGRESSION_X, SquaredError(1 / 20), layerwise=False)
    opt = TrustRegionMinimizer(
        model.parameters(),
        curvature=curvature,
        solver=DenseSolver(),
        control=LevenbergMarquardt(0.1),
        reduce=passthrough,
    )
    return model, opt


@configuration("gauss_newton-layerwise-operator_radius")
def _operator_radius():
    model = regressor()
    curvature = GaussNewton.for_module(model, REGRESSION_X, SquaredError(1 / 20), layerwise=True)
    opt = TrustRegionMinimizer(
        model.parameters(),
        curvature=curvature,
        solver=ConjugateGradient(max_iter=20),
        control=TrustRadius(0.1, metric="operator"),
    )
    return model, opt


def run(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[tuple[list[Tensor], object]]:
    """``steps`` steps; after each, the parameters and the result."""
    trace = []
    for _ in range(steps):
        opt.step(closure_for(model))
        trace.append((snapshot(model.parameters()), opt.last_result))
    return trace


def describe(obj: object, depth: int = 0) -> object:
    """A component's structure: its class and, for the library's own objects, its attributes (recursively)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Tensor):
        return ("Tensor", tuple(obj.shape), obj.dtype)
    if type(obj).__module__.startswith("trustregion") and hasattr(obj, "__dict__") and depth < 4:
        return type(obj).__qualname__, {key: describe(value, depth + 1) for key, value in vars(obj).items()}
    return type(obj).__qualname__


def assert_same_components(original: torch.optim.Optimizer, clone: torch.optim.Optimizer) -> None:
    assert type(clone) is type(original)
    assert set(original.components) >= {"curvature", "solver", "reduce"}
    assert ("line_search" in original.components) is isinstance(original, TrustRegionOptimizer)
    assert ("control" in original.components) is isinstance(original, TrustRegionMinimizer)
    for name in original.components:
        mine, theirs = getattr(original, name), getattr(clone, name)
        if name == "reduce":
            assert theirs is mine  # a function: copied by reference, as pickle does
            continue
        assert type(theirs) is type(mine), name
        assert theirs is not mine, name
        assert describe(theirs) == describe(mine), name


def assert_steps_alike(original, clone, steps: int = 3) -> None:
    """The clone steps bit for bit like the original, with equal results and state."""
    for (params, result), (clone_params, clone_result) in zip(run(*original, steps), run(*clone, steps), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(params, clone_params, strict=True))
        assert same_values(result, clone_result)
    assert str(original[1].state_dict()) == str(clone[1].state_dict())


COPIES = [(name, how) for name in sorted(CONFIGURATIONS) for how in ("deepcopy", "pickle")]


@pytest.mark.parametrize(("name", "how"), COPIES)
def test_a_copy_keeps_every_component_and_steps_bit_identically(name: str, how: str) -> None:
    model, opt = CONFIGURATIONS[name]()
    run(model, opt, 2)  # some state first
    clone = copy.deepcopy((model, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((model, opt)))

    assert_same_components(opt, clone[1])
    assert clone[1].param_groups[0]["params"][0] is next(clone[0].parameters())  # the copy drives the copied model
    assert same_values(clone[1].last_result, opt.last_result)
    assert_steps_alike((model, opt), clone)


def test_a_deep_copied_gauss_newton_reads_the_copied_module() -> None:
    model, opt = CONFIGURATIONS["npg-gauss_newton-layerwise-steihaug"]()
    clone_model, clone_opt = copy.deepcopy((model, opt))
    before = snapshot(model.parameters())
    run(clone_model, clone_opt, 2)
    assert bitwise_equal(model.parameters(), before)
    assert not bitwise_equal(clone_model.parameters(), before)


# ----------------------------------------------------------------------------- state_dict


@pytest.mark.parametrize(
    ("name", "state_type"),
    [
        ("newton_cg-trust_radius", TrustRadiusState),
        ("gauss_newton-levenberg_marquardt", DampingState),
        ("gauss_newton-layerwise-operator_radius", TrustRadiusState),
    ],
)
def test_minimizer_state_dict_round_trip_keeps_the_typed_control_state(name, state_type, tmp_path: Path) -> None:
    model, opt = CONFIGURATIONS[name]()
    run(model, opt, 3)
    saved = opt.state_dict()
    control = saved["state"][0]["control"]
    assert control == dataclasses.asdict(opt.control_state)  # a plain dict of floats ...
    assert type(opt.control_state) is state_type
    torch.save(saved, tmp_path / "optimizer.pt")
    loaded = torch.load(tmp_path / "optimizer.pt", weights_only=True)  # ... so it loads without pickle

    fresh_model, fresh = CONFIGURATIONS[name]()
    fresh_model.load_state_dict(model.state_dict())
    fresh.load_state_dict(loaded)

    assert fresh.control_state == opt.control_state
    assert type(fresh.control_state) is state_type
    assert_steps_alike((model, opt), (fresh_model, fresh))


def test_a_levenberg_marquardt_state_is_refused_by_a_trust_radius_minimizer() -> None:
    model, opt = CONFIGURATIONS["gauss_newton-levenberg_marquardt"]()
    run(model, opt, 2)
    _, other = CONFIGURATIONS["newton_cg-trust_radius"]()
    with pytest.raises(ValueError, match="TrustRadiusState"):
        other.load_state_dict(opt.state_dict())
    assert other.control_state == other.control.init()


def test_optimizer_state_dict_round_trip(tmp_path: Path) -> None:
    model, opt = CONFIGURATIONS["trpo-default"]()
    run(model, opt, 3)
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    fresh_model = policy()
    fresh_model.load_state_dict(model.state_dict())
    fresh = TrustRegionOptimizer(fresh_model.parameters(), 0.5)
    fresh.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    assert fresh.param_groups[0]["max_kl"] == 0.01
    assert fresh.state[next(fresh_model.parameters())]["step"] == 3
    assert_steps_alike((model, opt), (fresh_model, fresh))


# ----------------------------------------------------------------------------- exceptions inside a step


def raising_at(closure: Callable[[], object], call: int, error: BaseException, before: dict | None = None):
    """``closure`` that raises ``error`` on its ``call``-th call (1-based); ``before`` replaces earlier calls."""
    calls = [0]

    def wrapped():
        calls[0] += 1
        if calls[0] == call:
            raise error
        if before and calls[0] in before:
            return before[calls[0]]()
        return closure()

    wrapped.calls = calls
    return wrapped


OPTIMIZER_NAMES = ["trpo-default", "trpo-gauss_newton-autograd-dense", "npg-gauss_newton-layerwise-steihaug"]
MINIMIZER_NAMES = ["newton_cg-trust_radius", "gauss_newton-levenberg_marquardt"]


@pytest.mark.parametrize("error", [Boom("trial"), KeyboardInterrupt()], ids=["exception", "keyboard_interrupt"])
@pytest.mark.parametrize("name", OPTIMIZER_NAMES + MINIMIZER_NAMES)
def test_an_exception_at_the_first_trial_point_restores_the_parameters(name: str, error: BaseException) -> None:
    model, opt = CONFIGURATIONS[name]()
    run(model, opt, 1)
    saved = snapshot(model.parameters())
    closure = raising_at(closure_for(model), 2, error)
    with pytest.raises(type(error)):
        opt.step(closure)
    assert closure.calls[0] == 2  # it was raised at a trial point, where the parameters had moved
    assert bitwise_equal(model.parameters(), saved)


def test_an_exception_after_a_backtrack_restores_the_parameters() -> None:
    model, opt = CONFIGURATIONS["trpo-default"]()
    saved = snapshot(model.parameters())
    closure = trpo_closure(model)

    def infinite_loss():
        loss, kl = closure()
        return loss + math.inf, kl

    wrapped = raising_at(closure, 3, KeyboardInterrupt(), before={2: infinite_loss})
    with pytest.raises(KeyboardInterrupt):
        opt.step(wrapped)
    assert wrapped.calls[0] == 3
    assert bitwise_equal(model.parameters(), saved)


class FailingProducts(Curvature):
    """``inner``'s operator, raising ``error`` on its ``fail_at``-th product."""

    def __init__(self, inner: Curvature, fail_at: int, error: BaseException) -> None:
        self.inner, self.fail_at, self.error = inner, fail_at, error
        self.needs_loss_graph = inner.needs_loss_graph

    def build(self, problem) -> LinearOperator:
        operator = self.inner.build(problem)
        count = [0]

        def product(vector: Tensor) -> Tensor:
            count[0] += 1
            if count[0] == self.fail_at:
                raise self.error
            return operator(vector)

        return LinearOperator(product, operator.dim, positive_semidefinite=operator.positive_semidefinite)


@pytest.mark.parametrize("error", [Boom("product"), KeyboardInterrupt()], ids=["exception", "keyboard_interrupt"])
@pytest.mark.parametrize("name", OPTIMIZER_NAMES + MINIMIZER_NAMES)
def test_an_exception_inside_a_curvature_product_restores_the_parameters(name: str, error: BaseException) -> None:
    model, opt = CONFIGURATIONS[name]()
    run(model, opt, 1)
    saved = snapshot(model.parameters())
    untouched = copy.deepcopy((model, opt))
    curvature = FailingProducts(opt.curvature, 1, error)
    with pytest.raises(type(error)):
        opt.step(closure_for(model), curvature=curvature)
    assert bitwise_equal(model.parameters(), saved)
    assert_steps_alike((model, opt), untouched, steps=1)  # the failed step left no trace


# ----------------------------------------------------------------------------- refused steps change nothing


class NeverBuilt(Curvature):
    """A curvature that must not be built (the step should stop before it)."""

    def build(self, problem) -> LinearOperator:
        raise AssertionError("the curvature was built")


def test_a_zero_gradient_is_rejected_before_the_curvature_is_built() -> None:
    center = torch.tensor([0.5, -1.0, 2.0], dtype=DTYPE)
    theta = center.clone().requires_grad_()
    anchor = center.clone()

    def closure():
        return (theta - center).square().sum(), 0.5 * (theta - anchor).square().sum()

    opt = TrustRegionOptimizer([theta], 0.01, curvature=NeverBuilt())
    opt.step(closure)
    result = opt.last_result
    assert result.reason is Reason.ZERO_GRADIENT and not result.accepted
    assert result.gradient_norm == 0.0
    assert result.closure_calls == 1 and result.curvature_products == 0
    assert torch.equal(theta.detach(), center)


def straight_through(theta: Tensor, direction: Tensor) -> Callable[[], tuple[Tensor, Tensor]]:
    """A loss whose value is 1.0 everywhere but whose gradient is ``-direction``: no step can improve it."""
    anchor = theta.detach().clone()

    def closure():
        linear = -(direction @ theta)
        return 1.0 + (linear - linear.detach()), 0.5 * (theta - anchor).square().sum()

    return closure


def test_backtracking_refuses_a_zero_improvement_and_restores_the_parameters() -> None:
    theta = torch.tensor([0.1, 0.2, 0.3], dtype=DTYPE, requires_grad=True)
    saved = snapshot([theta])
    closure = straight_through(theta, torch.tensor([1.0, -2.0, 0.5], dtype=DTYPE))
    opt = TrustRegionOptimizer([theta], 0.01, curvature=KLHessian())
    opt.step(closure)
    result = opt.last_result
    assert not result.accepted and result.reason is Reason.LINE_SEARCH_EXHAUSTED
    assert result.actual_improvement == 0.0 and result.expected_improvement > 0.0
    assert result.closure_calls == 1 + 11
    assert bitwise_equal([theta], saved)


def test_backtracking_line_search_needs_a_strict_improvement() -> None:
    fractions = []

    def trial(fraction: float) -> TrialPoint:
        fractions.append(fraction)
        return TrialPoint(1.0, 0.0)  # the loss before, exactly

    result = BacktrackingLineSearch(max_backtracks=4)(SearchProblem(trial, 1.0, 0.5, 0.01))
    assert not result.accepted and result.fraction == 0.0
    assert fractions == [0.8**k for k in range(5)]
    improving = BacktrackingLineSearch()(SearchProblem(lambda f: TrialPoint(1.0 - 1e-12, 0.0), 1.0, 0.5, 0.01))
    assert improving.accepted and improving.fraction == 1.0


@pytest.mark.parametrize(
    ("improvement", "accepted_at"),
    [
        (lambda fraction: 0.6 * fraction, 1.0),  # above half the linear model's gain at every fraction
        (lambda fraction: 0.3 * fraction, None),  # below it at every fraction: refused
        (lambda fraction: 0.2, 0.25),  # a fixed gain passes once 0.5 · t · 1.0 <= 0.2
    ],
)
def test_backtracking_asks_for_a_fraction_of_the_expected_improvement(improvement, accepted_at) -> None:
    """``min_improvement_ratio = 0.5``: a trial at ``t`` must gain ``>= 0.5 · t · β gᵀs`` (baselines' accept_ratio)."""
    search = BacktrackingLineSearch(max_backtracks=3, ratio=0.5, min_improvement_ratio=0.5)
    result = search(SearchProblem(lambda fraction: TrialPoint(1.0 - improvement(fraction), 0.0), 1.0, 1.0, 0.01))
    assert result.accepted is (accepted_at is not None)
    assert result.fraction == (accepted_at or 0.0)


@pytest.mark.parametrize(
    ("reason", "curvature", "gradient_dot", "usable"),
    [
        (SolverReason.CONVERGED, 1.0, 2.0, True),
        (SolverReason.CONVERGED, 1.0, 0.0, False),
        (SolverReason.CONVERGED, 1.0, -2.0, False),
        (SolverReason.CONVERGED, 0.0, 2.0, False),
        (SolverReason.NEGATIVE_CURVATURE, -1.0, 2.0, False),
        (SolverReason.CONVERGED, math.nan, 2.0, False),
        (SolverReason.CONVERGED, math.inf, 2.0, False),
        (SolverReason.NONFINITE, 1.0, 2.0, False),
        (SolverReason.BOUNDARY, 1e-300, 1e-300, True),
    ],
)
def test_a_solver_result_is_usable_only_with_positive_curvature_and_gradient_dot(
    reason, curvature, gradient_dot, usable
) -> None:
    result = SolverResult(torch.ones(2, dtype=DTYPE), reason, 1, 0.0, curvature, gradient_dot)
    assert result.usable is usable


class Uphill(Solver):
    """Returns ``-g`` with honest scalars: ``sᵀAs > 0`` but ``gᵀs < 0`` (e.g. a broken preconditioner)."""

    def __call__(self, operator: LinearOperator, rhs: Tensor) -> SolverResult:
        direction = -rhs
        curvature = (direction @ operator(direction)).item()
        return SolverResult(direction, SolverReason.CONVERGED, 1, 0.0, curvature, (rhs @ direction).item())


def test_a_direction_that_does_not_descend_is_rejected_without_a_trial() -> None:
    model, _ = CONFIGURATIONS["trpo-default"]()
    saved = snapshot(model.parameters())
    opt = TrustRegionOptimizer(model.parameters(), 0.01, solver=Uphill())
    opt.step(trpo_closure(model))
    result = opt.last_result
    assert result.reason is Reason.NON_POSITIVE_CURVATURE and not result.accepted
    assert result.closure_calls == 1
    assert bitwise_equal(model.parameters(), saved)


# ----------------------------------------------------------------------------- the per-step curvature


@pytest.mark.parametrize(
    ("name", "per_step"),
    [
        ("trpo-default", lambda model: Damped(KLHessian(), 0.3)),
        ("trpo-default", lambda model: Damped(GaussNewton.for_module(model, POLICY_OBS[:8], CategoricalFisher()))),
        ("newton_cg-trust_radius", lambda model: Damped(Hessian(), 2.0)),
    ],
)
def test_step_uses_the_per_step_curvature(name: str, per_step) -> None:
    model, _ = CONFIGURATIONS[name]()
    reference_model = copy.deepcopy(model)
    options = {"solver": DenseSolver()}
    if name == "trpo-default":
        opt = TrustRegionOptimizer(model.parameters(), 0.01, curvature=NeverBuilt(), **options)
        reference = TrustRegionOptimizer(
            reference_model.parameters(), 0.01, curvature=per_step(reference_model), **options
        )
    else:
        opt = TrustRegionMinimizer(model.parameters(), curvature=NeverBuilt(), **options)
        reference = TrustRegionMinimizer(reference_model.parameters(), curvature=per_step(reference_model), **options)

    opt.step(closure_for(model), curvature=per_step(model))
    reference.step(closure_for(reference_model))

    assert opt.last_result.accepted
    assert bitwise_equal(model.parameters(), snapshot(reference_model.parameters()))
    saved = snapshot(model.parameters())
    with pytest.raises(AssertionError, match="the curvature was built"):
        opt.step(closure_for(model))  # without it, the constructor's curvature is used again
    assert bitwise_equal(model.parameters(), saved)
    with pytest.raises(TypeError, match="curvature"):
        opt.step(closure_for(model), curvature="KLHessian")


# ----------------------------------------------------------------------------- the surface


def test_the_library_exports_at_least_two_torch_optimizers() -> None:
    exported = [getattr(trustregion, name) for name in trustregion.__all__]
    optimizers = [obj for obj in exported if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)]
    assert len(optimizers) >= 2
    assert {TrustRegionOptimizer, TrustRegionMinimizer} <= set(optimizers)
    assert not issubclass(TrustRegionOptimizer, TrustRegionMinimizer)
    assert not issubclass(TrustRegionMinimizer, TrustRegionOptimizer)


RADIUS_WORDS = ("radius", "control", "levenberg", "marquardt", "saddle", "pull_back", "damping")


def identifiers(source: str) -> set[str]:
    """Every name the code uses (not its docstrings or messages): names, attributes, imports, arguments."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.update({node.name, node.asname or node.name})
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.keyword) and node.arg:
            names.add(node.arg)
    return names


def test_the_kl_optimizer_knows_no_radius_control() -> None:
    import trustregion.optimizer

    used = identifiers(inspect.getsource(trustregion.optimizer))
    assert "TrustRegionOptimizer" in used and "line_search" in used  # the check sees the code
    offenders = sorted(name for name in used if any(word in name.lower() for word in RADIUS_WORDS))
    assert offenders == []
    assert "control" not in inspect.signature(TrustRegionOptimizer).parameters
    assert not hasattr(TrustRegionOptimizer([torch.zeros(1, requires_grad=True)]), "control")
    with pytest.raises(TypeError, match="line_search"):
        TrustRegionOptimizer([torch.zeros(1, requires_grad=True)], line_search=TrustRadius())


def long_functions(roots: tuple[str, ...], limit: int = 50) -> list[str]:
    offenders = []
    for root in roots:
        for path in sorted((PROJECT_ROOT / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > limit:
                        where = path.relative_to(PROJECT_ROOT)
                        offenders.append(f"{where}:{node.lineno} {node.name} ({length} lines)")
    return offenders


@pytest.mark.parametrize("root", ["trustregion", "agents"])
def test_no_function_is_longer_than_fifty_lines(root: str) -> None:
    offenders = long_functions((root,))
    assert not offenders, "functions longer than 50 lines:\n" + "\n".join(offenders)


def test_the_function_length_check_sees_functions() -> None:
    assert long_functions(("trustregion",), limit=5)  # some are longer than five lines


@pytest.mark.parametrize("reason", list(Reason), ids=lambda reason: reason.value)
def test_every_reason_has_a_message(reason: Reason) -> None:
    assert isinstance(reason.message, str)
    assert len(reason.message.split()) >= 3
    assert reason.nonfinite is reason.value.startswith("nonfinite")


def test_a_minimal_optimizer_call_still_works() -> None:
    """The mission's call, unchanged: ``TrustRegionOptimizer(params, max_kl=0.01).step(closure)``."""
    model = policy()
    before = snapshot(model.parameters())
    loss = TrustRegionOptimizer(model.parameters(), max_kl=0.01).step(trpo_closure(model))
    assert loss.dtype == DTYPE and loss.shape == ()
    assert not bitwise_equal(model.parameters(), before)


def test_residual_gauss_newton_minimizer_is_picklable_with_a_module_level_residual(tmp_path: Path) -> None:
    amplitude = torch.tensor([1.0], dtype=DTYPE, requires_grad=True)
    fit = ResidualGaussNewton(module_level_residuals)
    opt = TrustRegionMinimizer([amplitude], curvature=fit, control=LevenbergMarquardt())
    opt.step(fit.closure([amplitude]))
    (tmp_path / "opt.pkl").write_bytes(pickle.dumps(([amplitude], opt)))
    (clone_params, clone) = pickle.loads((tmp_path / "opt.pkl").read_bytes())
    assert_same_components(opt, clone)
    opt.step(fit.closure([amplitude]))
    clone.step(clone.curvature.closure(clone_params))
    assert torch.equal(amplitude.detach(), clone_params[0].detach())


def module_level_residuals(amplitude: Tensor) -> Tensor:
    return amplitude * torch.tensor([1.0, 2.0, 3.0], dtype=DTYPE) - torch.tensor([2.0, 4.1, 5.9], dtype=DTYPE)
