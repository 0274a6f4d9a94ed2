"""Preconditioned CG on TRPO's policy step: accuracy per iteration and time, on real batches, in one run.

For each environment the agent trains briefly with its per-environment defaults (MuJoCo:
``cg_iters=25``, ``cg_damping=0.1``), so that the policy is past its initialisation, then
collects one more batch. At that batch's policy step the script takes the very operator
``A = F + λI`` (the damped layer-wise Gauss-Newton on the Fisher batch) and right-hand side
``g`` (the policy gradient) that the agent's own ``update_policy`` hands its solver, and solves
``A s = g`` with :class:`~trustregion.ConjugateGradient` without and with each preconditioner
(:class:`~trustregion.Jacobi`, :class:`~trustregion.KFAC`).

The reference is the exact ``s* = A⁻¹ g``: a Cholesky solve of the dense ``A`` (``n`` products,
symmetrised), checked by its residual through the operator itself. For every preconditioner:

* ``A-err``: ``‖s_k - s*‖_A / ‖s*‖_A`` after ``k`` iterations, the norm CG minimises over its
  Krylov space and the one that measures the step: TRPO scales ``s`` to the KL boundary, and
  the scaled step's predicted improvement is ``cos_A(s_k, s*) = gᵀs_k / (‖s_k‖_A ‖s*‖_A)`` of
  the exact step's (``gain``); for a CG iterate ``gain = sqrt(1 - A-err²)``.
* ``resid``: the Euclidean relative residual ``‖g - A s_k‖ / ‖g‖``, which CG does not minimise.
* ``k for A-err``, ``k for resid``: the iterations needed to reach what plain CG reaches at
  ``--reference-iters`` (25, the MuJoCo default).
* wall time: building ``P`` (also in products of ``A``), and each solve with the build included;
  medians over rounds that time every solve once each, so that a shared machine's drift falls
  on all alike.

    python benchmarks/preconditioning.py           # Hopper-v5, HalfCheetah-v5, CartPole-v1: minutes
    python benchmarks/preconditioning.py --quick   # CartPole-v1, a 32-32 network, small budgets: under a minute
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from agents import TRPO
from trustregion import KFAC, ConjugateGradient, Jacobi, LinearOperator, Preconditioner, Solver
from trustregion.result import SolverResult

MakePreconditioner = Callable[[], Preconditioner | None]
PRECONDITIONERS: dict[str, MakePreconditioner] = {"none": lambda: None, "jacobi": Jacobi, "kfac": KFAC}
ITERATIONS = (5, 10, 15, 25)
ENVS = ("Hopper-v5", "HalfCheetah-v5", "CartPole-v1")


# ------------------------------------------------------------------------------ the agent's step
class CapturingSolver(Solver):
    """Hands the step's operator and right-hand side to ``inspect`` (parameters still at ``θ_old``),
    then solves as the agent's own solver does."""

    def __init__(self, inner: Solver, inspect: Callable[[LinearOperator, Tensor], None]) -> None:
        self.inner, self.inspect = inner, inspect

    def __call__(self, operator: LinearOperator, rhs: Tensor) -> SolverResult:
        self.inspect(operator, rhs)
        return self.inner(operator, rhs)


def trained_agent(env: str, steps: int, seed: int, dtype: str, **overrides: object) -> TRPO:
    """The agent with its per-environment defaults after ``steps`` environment steps (one thread)."""
    agent = TRPO(env, seed=seed, dtype=dtype, torch_threads=1, **overrides)
    agent.learn(steps)
    return agent


def at_policy_step(agent: TRPO, inspect: Callable[[LinearOperator, Tensor], None]) -> None:
    """Collect one batch and run ``inspect`` on the operator and gradient of its policy step."""
    batch = agent.rollout_batch()
    optimizer = agent.policy_optimizer
    solver = optimizer.solver
    optimizer.solver = CapturingSolver(solver, inspect)
    try:
        agent.update_policy(batch)
    finally:
        optimizer.solver = solver


# ------------------------------------------------------------------------------ the exact solve
@dataclass
class Exact:
    """The dense ``A`` with its Cholesky factor, ``s* = A⁻¹ g`` and ``‖s*‖_A``."""

    matrix: Tensor
    factor: Tensor
    solution: Tensor
    energy_norm: float
    operator_residual: float  # ‖g - A s*‖ / ‖g‖ with A the operator itself
    seconds: float

    @classmethod
    def of(cls, operator: LinearOperator, rhs: Tensor) -> Exact:
        start = time.perf_counter()
        matrix = operator.dense(rhs.dtype, rhs.device)
        matrix = 0.5 * (matrix + matrix.T)
        factor = torch.linalg.cholesky(matrix)
        solution = torch.cholesky_solve(rhs.unsqueeze(1), factor).squeeze(1)
        seconds = time.perf_counter() - start
        residual = (torch.linalg.vector_norm(rhs - operator(solution)) / torch.linalg.vector_norm(rhs)).item()
        return cls(matrix, factor, solution, (rhs @ solution).sqrt().item(), residual, seconds)

    def energy_error(self, step: Tensor) -> float:
        """``‖step - s*‖_A / ‖s*‖_A``."""
        error = step - self.solution
        return (error @ (self.matrix @ error)).clamp(min=0).sqrt().item() / self.energy_norm

    def residual_energy_error(self, residual: Tensor) -> float:
        """The same error from the residual ``r = g - A s``: ``‖s - s*‖_A = sqrt(rᵀA⁻¹r)``."""
        solved = torch.cholesky_solve(residual.unsqueeze(1), self.factor).squeeze(1)
        return (residual @ solved).clamp(min=0).sqrt().item() / self.energy_norm

    def gain(self, step: Tensor, rhs: Tensor) -> float:
        """``gᵀs / (‖s‖_A ‖s*‖_A)``: the scaled step's predicted improvement over the exact step's."""
        return (rhs @ step).item() / ((step @ (self.matrix @ step)).clamp(min=0).sqrt().item() * self.energy_norm)


# ------------------------------------------------------------------------------ one preconditioner
@dataclass
class Measured:
    """One preconditioner on one step: errors per iteration, and times."""

    curve_errors: list[float]  # A-err after k = 0, 1, ... iterations (from the residuals CG preconditions)
    curve_residuals: list[float]
    errors: dict[int, float] = field(default_factory=dict)  # A-err of the solver's own result after k
    residuals: dict[int, float] = field(default_factory=dict)
    gains: dict[int, float] = field(default_factory=dict)
    solve_ms: dict[int, float] = field(default_factory=dict)
    build_ms: float = 0.0


def iterations_to(values: list[float], target: float) -> int | None:
    """The fewest iterations whose entry in ``values`` (one per iteration) is at most ``target``; ``None``: never."""
    return next((k for k, value in enumerate(values) if value <= target), None)


def error_curve(
    operator: LinearOperator, rhs: Tensor, exact: Exact, make: MakePreconditioner, iterations: int
) -> Measured:
    """A-err and residual after 0..``iterations`` iterations, read from the residuals ``r_k`` that CG
    hands its preconditioner (``‖s_k - s*‖_A = sqrt(r_kᵀA⁻¹r_k)``), in one solve."""
    preconditioner = make()
    apply = (lambda r: r) if preconditioner is None else preconditioner.build(operator, rhs)
    rhs_norm = torch.linalg.vector_norm(rhs).item()
    measured = Measured([], [])

    def observed(residual: Tensor) -> Tensor:
        measured.curve_errors.append(exact.residual_energy_error(residual))
        measured.curve_residuals.append(torch.linalg.vector_norm(residual).item() / rhs_norm)
        return apply(residual)

    ConjugateGradient(max_iter=iterations + 1, tol=0.0, preconditioner=observed)(operator, rhs)
    return measured


def record_solve(
    measured: Measured, iterations: int, operator: LinearOperator, rhs: Tensor, exact: Exact, make: MakePreconditioner
) -> None:
    """Run ``ConjugateGradient(max_iter=iterations)`` as the agent does (its tolerance) and record its errors."""
    result = ConjugateGradient(max_iter=iterations, preconditioner=make())(operator, rhs)
    measured.errors[iterations] = exact.energy_error(result.direction)
    measured.residuals[iterations] = result.relative_residual
    measured.gains[iterations] = exact.gain(result.direction, rhs)


def milliseconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return 1000 * (time.perf_counter() - start)


def time_interleaved(results: dict[str, Measured], operator: LinearOperator, rhs: Tensor, repeats: int) -> float:
    """Time every recorded solve (building ``P`` included) and every build, and one product, in rounds
    of one each, so that the shared machine's drift falls on all of them alike; medians. Returns the
    product's milliseconds."""
    samples: dict[tuple[str, int], list[float]] = defaultdict(list)  # k = 0: the build; "product": one product
    for _ in range(repeats):
        samples["product", 0].append(milliseconds(lambda: operator(rhs)))
        for name, measured in results.items():
            make = PRECONDITIONERS[name]
            if (preconditioner := make()) is not None:
                samples[name, 0].append(milliseconds(lambda p=preconditioner: p.build(operator, rhs)))
            for k in sorted(measured.errors):
                solver = ConjugateGradient(max_iter=k, preconditioner=make())
                samples[name, k].append(milliseconds(lambda s=solver: s(operator, rhs)))
    for (name, k), values in samples.items():
        if name in results:
            if k == 0:
                results[name].build_ms = statistics.median(values)
            else:
                results[name].solve_ms[k] = statistics.median(values)
    return statistics.median(samples["product", 0])


# ------------------------------------------------------------------------------ one step, all preconditioners
@dataclass
class StepReport:
    """Every preconditioner on one policy step, and the targets plain CG sets at ``reference`` iterations."""

    env: str
    dim: int
    damping: float
    exact_seconds: float
    exact_residual: float
    reference: int
    results: dict[str, Measured]
    product_ms: float = 0.0
    matching_errors: dict[str, int | None] = field(default_factory=dict)  # iterations to plain CG's A-err
    matching_residuals: dict[str, int | None] = field(default_factory=dict)  # ... and to its residual
    equivalent: dict[str, dict[int, int | None]] = field(default_factory=dict)  # plain CG's k for the same A-err


def measure_step(
    env: str, damping: float, operator: LinearOperator, rhs: Tensor, options: argparse.Namespace
) -> StepReport:
    """Exact solve, every preconditioner's curve, the iterations to plain CG's accuracy, timed solves."""
    exact = Exact.of(operator, rhs)
    results = {
        name: error_curve(operator, rhs, exact, make, options.max_iters) for name, make in PRECONDITIONERS.items()
    }
    reference = options.reference_iters
    report = StepReport(env, rhs.numel(), damping, exact.seconds, exact.operator_residual, reference, results)
    plain = results["none"]
    wanted = {name: {*ITERATIONS, reference} for name in results}
    for name, measured in results.items():
        report.matching_errors[name] = iterations_to(measured.curve_errors, plain.curve_errors[reference])
        report.matching_residuals[name] = iterations_to(measured.curve_residuals, plain.curve_residuals[reference])
        report.equivalent[name] = {
            k: iterations_to(plain.curve_errors, measured.curve_errors[k])
            for k in ITERATIONS
            if k < len(measured.curve_errors)
        }
        wanted[name] |= {report.matching_errors[name], report.matching_residuals[name]} - {None, 0}
        wanted["none"] |= set(report.equivalent[name].values()) - {None, 0}
    for name, iterations in wanted.items():
        for k in sorted(iterations):
            record_solve(results[name], k, operator, rhs, exact, PRECONDITIONERS[name])
    report.product_ms = time_interleaved(results, operator, rhs, options.repeats)
    return report


def measure_env(env: str, options: argparse.Namespace) -> StepReport:
    """Train the agent briefly, then measure at the policy step of its next batch."""
    overrides = {"hidden_sizes": (32, 32)} if options.quick else {}
    agent = trained_agent(env, options.train_steps, options.seed, options.dtype, **overrides)
    reports: list[StepReport] = []
    damping = agent.config.cg_damping
    try:
        at_policy_step(agent, lambda operator, rhs: reports.append(measure_step(env, damping, operator, rhs, options)))
    finally:
        agent.close()
    return reports[0]


# ------------------------------------------------------------------------------ tables
def print_report(report: StepReport) -> None:
    print(
        f"\n{report.env}: n = {report.dim} parameters, λ = {report.damping:g}; one product {report.product_ms:.2f} ms; "
        f"exact solve (dense A + Cholesky) {report.exact_seconds:.1f} s, its residual through the operator "
        f"{report.exact_residual:.1e}"
    )
    columns = sorted(report.results["none"].errors.keys() & set(ITERATIONS) | {report.reference})
    header = "".join(f"{f'k={k}':>10s}" for k in columns)
    for title, values, fmt in (
        ("A-norm relative error ‖s_k - s*‖_A / ‖s*‖_A", "errors", ".2e"),
        ("Euclidean relative residual ‖g - A s_k‖ / ‖g‖", "residuals", ".2e"),
        ("gain: cos_A(s_k, s*), the scaled step's predicted improvement over the exact step's", "gains", ".4f"),
        ("solve time, ms (building P included)", "solve_ms", ".1f"),
    ):
        print(f"  {title}\n  {'preconditioner':16s}{header}")
        for name, measured in report.results.items():
            row = getattr(measured, values)
            print(f"  {name:16s}" + "".join(f"{format(row[k], fmt):>10s}" for k in columns))
    print_matching(report)


def print_matching(report: StepReport) -> None:
    plain = report.results["none"]
    reference, base_ms = report.reference, plain.solve_ms[report.reference]
    print(
        f"  to plain CG's accuracy at k={reference} (A-err {plain.curve_errors[reference]:.2e}, "
        f"resid {plain.curve_residuals[reference]:.2e}; {base_ms:.1f} ms): iterations, ms, time over plain CG's\n"
        f"  {'preconditioner':16s}{'build ms':>10s}{'products':>10s}{'k (A-err)':>11s}{'ms':>9s}{'x none':>8s}"
        f"{'k (resid)':>11s}{'ms':>9s}{'x none':>8s}"
    )
    for name, measured in report.results.items():
        cells = [f"{measured.build_ms:10.1f}{measured.build_ms / report.product_ms:10.1f}"]
        for k in (report.matching_errors[name], report.matching_residuals[name]):
            if k is None:
                cells.append(f"{f'>{len(measured.curve_errors) - 1}':>11s}{'-':>9s}{'-':>8s}")
            else:
                ms = measured.solve_ms.get(k, 0.0)
                cells.append(f"{k:11d}{ms:9.1f}{ms / base_ms:8.2f}")
        print(f"  {name:16s}" + "".join(cells))
    print_equivalent(report)


def print_equivalent(report: StepReport) -> None:
    plain = report.results["none"]
    columns = [k for k in ITERATIONS if k in report.equivalent["none"]]
    print(
        "  plain CG iterations that reach the same A-err after k, (this solve's time over that plain solve's)\n"
        f"  {'preconditioner':16s}" + "".join(f"{f'k={k}':>14s}" for k in columns)
    )
    for name, measured in report.results.items():
        cells = []
        for k in columns:
            equivalent = report.equivalent[name].get(k)
            if equivalent is None:
                cells.append(f"{f'>{len(plain.curve_errors) - 1}':>14s}")
            else:
                ratio = measured.solve_ms[k] / plain.solve_ms[equivalent] if equivalent else math.inf
                cells.append(f"{f'{equivalent} ({ratio:.2f})':>14s}")
        print(f"  {name:16s}" + "".join(cells))
    consistency = max(
        abs(measured.curve_errors[k] - error) / error
        for measured in report.results.values()
        for k, error in measured.errors.items()
        if k < len(measured.curve_errors) and error > 0
    )
    print(f"  (A-err from the residual recurrence against the solver's own result: within {100 * consistency:.1f} %)")


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", "--smoke", action="store_true", help="CartPole-v1, 32-32 network, small budgets (< 1 min)"
    )
    parser.add_argument("--envs", nargs="+", default=None, help=f"gymnasium ids (default: {' '.join(ENVS)})")
    parser.add_argument("--train-steps", type=int, default=None, help="environment steps before the measured batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="the agent's model dtype")
    parser.add_argument("--reference-iters", type=int, default=25, help="plain CG's iterations that set the target")
    parser.add_argument("--max-iters", type=int, default=None, help="longest error curve (default 100, quick 40)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (median; default 5, quick 1)")
    options = parser.parse_args(argv)
    envs = options.envs or (["CartPole-v1"] if options.quick else list(ENVS))
    options.train_steps = options.train_steps or (2048 if options.quick else 30_000)
    options.max_iters = options.max_iters or (40 if options.quick else 100)
    options.repeats = options.repeats or (1 if options.quick else 5)
    if options.max_iters < options.reference_iters:
        parser.error(f"--max-iters must be >= --reference-iters ({options.reference_iters})")
    torch.set_num_threads(1)
    print(
        f"torch {torch.__version__}, one thread; model {options.dtype} (solver vectors float64); "
        f"{options.train_steps} training steps, seed {options.seed}"
    )
    for env in envs:
        print_report(measure_env(env, options))


if __name__ == "__main__":
    main()
