"""Fault injection: NaN / inf in the loss, KL, gradient, products or line-search trials never reach the parameters."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from trustregion_helpers import bitwise_equal, policy_closure, snapshot

from trustregion import (
    BacktrackingLineSearch,
    ConjugateGradient,
    Curvature,
    Damped,
    DenseSolver,
    KLHessian,
    LinearOperator,
    NoLineSearch,
    Reason,
    StepProblem,
    TrustRegionOptimizer,
)

fault_values = st.sampled_from([math.nan, math.inf, -math.inf])
dtypes = st.sampled_from([torch.float32, torch.float64])
seeds = st.integers(0, 2**31 - 1)

PHASE_ONE_REASONS = {
    "loss": Reason.NONFINITE_LOSS,
    "constraint": Reason.NONFINITE_CONSTRAINT,
    "gradient": Reason.NONFINITE_GRADIENT,
    "product": Reason.NONFINITE_PRODUCT,
}


class PoisonGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by ``value`` (NaN or ±inf)."""

    @staticmethod
    def forward(ctx, tensor: Tensor, value: float) -> Tensor:  # type: ignore[override]
        ctx.value = value
        return tensor.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.value, None


class FaultyCurvature(Curvature):
    """Wraps a curvature; the ``fault_at``-th product (1-based) gets ``value`` in entry ``entry``."""

    def __init__(self, inner: Curvature, fault_at: int, value: float, entry: int) -> None:
        self.inner, self.fault_at, self.value, self.entry = inner, fault_at, value, entry
        self.needs_loss_graph = inner.needs_loss_graph

    def build(self, problem: StepProblem) -> LinearOperator:
        operator = self.inner.build(problem)
        count = [0]

        def product(vector: Tensor) -> Tensor:
            count[0] += 1
            result = operator(vector)
            if count[0] == self.fault_at:
                result = result.clone()
                result[self.entry % result.numel()] = self.value
            return result

        return LinearOperator(product, operator.dim, positive_semidefinite=operator.positive_semidefinite)


def faulty_closure(
    closure: Callable[[], tuple[Tensor, Tensor]], where: str, value: float, calls: Callable[[int], bool]
) -> Callable[[], tuple[Tensor, Tensor]]:
    """``closure`` with ``value`` added to the loss or the constraint at the calls ``calls(n)`` selects (1-based)."""
    count = [0]

    def wrapped() -> tuple[Tensor, Tensor]:
        count[0] += 1
        loss, constraint = closure()
        if calls(count[0]):
            if where == "loss":
                loss = loss + value
            else:
                constraint = constraint + value
        return loss, constraint

    return wrapped


def small_policy(seed: int, dtype: torch.dtype):
    return policy_closure("categorical", seed, batch=8, obs_dim=3, hidden=4, width=3, dtype=dtype)  # 31 parameters


def all_finite(params) -> bool:
    return all(torch.isfinite(p).all() for p in params)


@settings(max_examples=40)
@given(
    where=st.sampled_from(sorted(PHASE_ONE_REASONS)),
    value=fault_values,
    dtype=dtypes,
    fault_at=st.integers(1, 4),
    entry=st.integers(0, 1000),
    dense=st.booleans(),
    seed=seeds,
)
def test_faults_at_the_old_parameters_reject_warn_and_restore(
    where: str, value: float, dtype: torch.dtype, fault_at: int, entry: int, dense: bool, seed: int
) -> None:
    policy, closure = small_policy(seed, dtype)
    params = list(policy.parameters())
    saved = snapshot(params)
    curvature = Damped(KLHessian(), 0.1)
    if where == "product":
        curvature = FaultyCurvature(curvature, fault_at, value, entry)
    if where in ("loss", "constraint"):
        closure = faulty_closure(closure, where, value, lambda n: n == 1)
    if where == "gradient":
        clean = closure

        def closure() -> tuple[Tensor, Tensor]:
            loss, constraint = clean()
            return PoisonGradient.apply(loss, value), constraint

    solver = DenseSolver() if dense else ConjugateGradient(max_iter=10)
    opt = TrustRegionOptimizer(params, max_kl=0.01, curvature=curvature, solver=solver)
    reason = PHASE_ONE_REASONS[where]
    with pytest.warns(RuntimeWarning, match=re.escape(reason.message)):
        opt.step(closure)

    result = opt.last_result
    assert not result.accepted and result.reason is reason
    assert result.closure_calls == 1
    assert bitwise_equal(params, saved)
    assert opt.state[params[0]]["rejected_steps"] == 1


@settings(max_examples=40)
@given(
    where=st.sampled_from(["loss", "constraint"]),
    value=fault_values,
    dtype=dtypes,
    trial=st.integers(0, 3),
    persistent=st.booleans(),
    backtracking=st.booleans(),
    seed=seeds,
)
def test_faults_in_line_search_trials_never_reach_the_parameters(
    where: str, value: float, dtype: torch.dtype, trial: int, persistent: bool, backtracking: bool, seed: int
) -> None:
    if where == "constraint" and value == -math.inf:
        value = math.nan  # a -inf KL is test_backtracking_rejects_a_minus_infinite_constraint
    policy, clean = small_policy(seed, dtype)
    params = list(policy.parameters())
    saved = snapshot(params)
    first_faulty_call = trial + 2  # call 1 is at θ_old; call 2 is the first trial
    faulty = (lambda n: n >= first_faulty_call) if persistent else (lambda n: n == first_faulty_call)
    closure = faulty_closure(clean, where, value, faulty)
    search = BacktrackingLineSearch() if backtracking else NoLineSearch()
    max_kl = 0.01
    opt = TrustRegionOptimizer(params, max_kl=max_kl, line_search=search)
    with torch.no_grad():
        loss_before, _ = clean()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # whether these warn: test_a_step_rejected_because_...
        opt.step(closure)

    result = opt.last_result
    assert all_finite(params)
    faulty_trials = {t for t in range(result.closure_calls - 1) if faulty(t + 2)}
    if result.accepted:
        assert result.backtracks not in faulty_trials
        assert math.isfinite(result.loss_after) and math.isfinite(result.constraint_after)
        with torch.no_grad():
            loss_after, kl_after = clean()
        assert loss_after.item() < loss_before.item()
        if backtracking:
            assert kl_after.item() <= max_kl * (1 + 1e-6)
    else:
        assert bitwise_equal(params, saved)
        assert faulty_trials  # only a fault can make these searches fail


@pytest.mark.parametrize("search", [BacktrackingLineSearch(), NoLineSearch()], ids=["backtracking", "none"])
@pytest.mark.parametrize("where", ["loss", "constraint"])
def test_a_step_rejected_because_every_trial_is_nan_warns(search, where: str) -> None:
    # The optimizer promises a warning when a NaN or an infinity causes a rejection, with the reason.
    policy, clean = small_policy(seed=0, dtype=torch.float64)
    params = list(policy.parameters())
    saved = snapshot(params)
    closure = faulty_closure(clean, where, math.nan, lambda n: n >= 2)  # NaN at every line-search trial
    opt = TrustRegionOptimizer(params, max_kl=0.01, line_search=search)
    reason = {"loss": Reason.NONFINITE_LOSS, "constraint": Reason.NONFINITE_CONSTRAINT}[where]
    with pytest.warns(RuntimeWarning, match=re.escape(reason.message)):
        opt.step(closure)
    assert not opt.last_result.accepted
    assert opt.last_result.reason is reason
    assert bitwise_equal(params, saved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_backtracking_rejects_a_minus_infinite_constraint(dtype: torch.dtype) -> None:
    # The line search accepts only finite constraints; -inf passes "constraint <= max_kl" but is not finite.
    policy, clean = small_policy(seed=0, dtype=dtype)
    params = list(policy.parameters())
    saved = snapshot(params)
    closure = faulty_closure(clean, "constraint", -math.inf, lambda n: n >= 2)  # -inf at every trial
    opt = TrustRegionOptimizer(params, max_kl=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        opt.step(closure)
    assert not opt.last_result.accepted
    assert bitwise_equal(params, saved)


@pytest.mark.parametrize(
    ("faulty_call", "reason"),
    [(1, Reason.NONFINITE_LOSS), (2, Reason.NONFINITE_GRADIENT), (3, Reason.NONFINITE_PRODUCT)],
)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_faults_from_the_reduce_hook_are_caught(faulty_call: int, reason: Reason, value: float) -> None:
    # reduce sees, in order: the first closure's scalars, the gradient, then every curvature product.
    policy, closure = small_policy(seed=1, dtype=torch.float32)
    params = list(policy.parameters())
    saved = snapshot(params)
    count = [0]

    def reduce(tensor: Tensor) -> Tensor:
        count[0] += 1
        return tensor * value if count[0] == faulty_call else tensor

    opt = TrustRegionOptimizer(params, max_kl=0.01, reduce=reduce)
    with pytest.warns(RuntimeWarning, match=re.escape(reason.message)):
        opt.step(closure)
    assert opt.last_result.reason is reason
    assert bitwise_equal(params, saved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_the_optimizer_recovers_after_a_fault(dtype: torch.dtype) -> None:
    policy, clean = small_policy(seed=2, dtype=dtype)
    params = list(policy.parameters())
    opt = TrustRegionOptimizer(params, max_kl=0.01)
    with pytest.warns(RuntimeWarning):
        opt.step(faulty_closure(clean, "loss", math.nan, lambda n: n == 1))
    with torch.no_grad():
        loss_before, _ = clean()
    opt.step(clean)
    assert opt.last_result.accepted
    with torch.no_grad():
        loss_after, kl_after = clean()
    assert loss_after.item() < loss_before.item() and kl_after.item() <= 0.01
    state = opt.state[params[0]]
    assert (state["step"], state["rejected_steps"]) == (2, 1)
