"""Trust-region Newton-CG against ``scipy.optimize.minimize(method="trust-ncg")`` on a problem zoo.

Both methods get the same float64 function, gradient and Hessian-vector product (PyTorch
autograd, double backward), the same start, the same gradient tolerance ``gtol`` and iteration cap,
and the same trust-region constants (Δ₀ = 1, Δ̂ = 1000, η = 0.15; Nocedal & Wright
Algorithm 4.1 with Steihaug-Toint CG and the forcing tolerance min(0.5, √‖g‖)). Ours is
``TrustRegionMinimizer(params, curvature=Hessian(), control=TrustRadius(gtol=...))`` with a
loss-only closure.

Counted, in ONE run per problem:

* iterations: steps that proposed a point (accepted or rejected); scipy's ``nit``;
* Hessian products: every ``H v`` either method asked for; scipy's ``nhev`` (which includes
  the product ``trust-ncg`` spends per iteration on the model value), ours including the
  Lanczos probe of the final second-order check;
* function and gradient evaluations (ours: each step evaluates loss and gradient once and
  the trial loss once);
* the final loss, the distance to the known minimiser, and ``λ_min`` of the dense Hessian at
  the final point (negative: the method stopped at, or is walking away from, a saddle).

Problems: Rosenbrock (2-D, 100-D), Beale, Booth, Himmelblau, Wood, Powell's singular
function, an ill-conditioned convex quadratic, the indefinite quadratic
``θ1² + 3θ1θ2 + 2θ2²`` (saddle at 0, unbounded below) from a generic start and from the
saddle, and ``θ1² - θ2² + θ2⁴`` from its saddle (``g = 0``) and from ``(1, 0)`` (whose
Newton iterates run into the saddle).

Second part, least squares: the Moré-Garbow-Hillstrom problems 1-19 (``benchmarks/mgh.py``),
ours (:func:`trustregion.least_squares` with its defaults) against
``scipy.optimize.least_squares(method="lm")`` (MINPACK's ``lmder``) and ``method="trf"``, both
with the autograd Jacobian and their default tolerances. Counted per problem: success (the final
``Σ r²`` within a relative 1e-6, or 1e-10 absolute, of a published minimum), the final ``Σ r²``,
residual evaluations (ours: every call of the residual function, by a counting wrapper: the
closure's and the curvature's linearisation alike; scipy's ``nfev``), and Jacobian work (ours:
linearisations and curvature products; scipy's ``njev``). The summary is the geometric mean of
ours / scipy lm's residual evaluations over the problems both solve.

Run: ``python benchmarks/scipy_parity.py`` (``--smoke`` for the quick subset; 100-D becomes 10-D;
``--only mgh`` or ``--only trust-ncg`` for one part; ``--formulation damping`` or
``--formulation trust-region`` runs the least squares with that Levenberg-Marquardt formulation
instead of the defaults: ``LevenbergMarquardt`` with the dense solver, or ``ScaledTrustRadius`` with
``SecularSolver``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy
import torch
from scipy.optimize import least_squares as scipy_least_squares
from scipy.optimize import minimize

import trustregion
from trustregion import Hessian, Reason, TrustRadius, TrustRegionMinimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mgh  # the problem set, next to this file

DTYPE = torch.float64
Function = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- the zoo


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def beale(x: torch.Tensor) -> torch.Tensor:
    a, b = x[0], x[1]
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


def booth(x: torch.Tensor) -> torch.Tensor:
    return (x[0] + 2 * x[1] - 7) ** 2 + (2 * x[0] + x[1] - 5) ** 2


def himmelblau(x: torch.Tensor) -> torch.Tensor:
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


def wood(x: torch.Tensor) -> torch.Tensor:
    a, b, c, d = x
    return (
        100 * (a**2 - b) ** 2
        + (a - 1) ** 2
        + (c - 1) ** 2
        + 90 * (c**2 - d) ** 2
        + 10.1 * ((b - 1) ** 2 + (d - 1) ** 2)
        + 19.8 * (b - 1) * (d - 1)
    )


def powell_singular(x: torch.Tensor) -> torch.Tensor:
    a, b, c, d = x
    return (a + 10 * b) ** 2 + 5 * (c - d) ** 2 + (b - 2 * c) ** 4 + 10 * (a - d) ** 4


def ill_conditioned_quadratic(n: int = 20, condition: float = 1e4) -> Function:
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=DTYPE))
    matrix = (q * torch.logspace(0, math.log10(condition), n, dtype=DTYPE)) @ q.T
    matrix = 0.5 * (matrix + matrix.T)
    return lambda x: 0.5 * x @ matrix @ x - x.sum()


def indefinite_quadratic(x: torch.Tensor) -> torch.Tensor:
    return x[0] ** 2 + 3 * x[0] * x[1] + 2 * x[1] ** 2


def symmetric_saddle(x: torch.Tensor) -> torch.Tensor:
    return x[0] ** 2 - x[1] ** 2 + x[1] ** 4


@dataclass
class Problem:
    """A start and what is known: the minimiser, or that the problem is unbounded (``None``).

    ``kind``: ``"minimum"`` (a generic start), ``"saddle start"`` (``g = 0`` with negative
    curvature), ``"into saddle"`` (plain Newton iterates converge to a saddle) or ``"unbounded"``.
    """

    name: str
    function: Function
    start: list[float]
    minimiser: list[float] | None
    min_value: float | None
    kind: str = "minimum"


def zoo(rosenbrock_dim: int) -> list[Problem]:
    quadratic = ill_conditioned_quadratic()
    quadratic_min = torch.linalg.solve(
        torch.autograd.functional.hessian(quadratic, torch.zeros(20, dtype=DTYPE)), torch.ones(20, dtype=DTYPE)
    )
    return [
        Problem("rosenbrock", rosenbrock, [-1.2, 1.0], [1.0, 1.0], 0.0),
        Problem("rosenbrock", rosenbrock, [-1.2, 1.0] * (rosenbrock_dim // 2), [1.0] * rosenbrock_dim, 0.0),
        Problem("beale", beale, [1.0, 1.0], [3.0, 0.5], 0.0),
        Problem("booth", booth, [0.0, 0.0], [1.0, 3.0], 0.0),
        Problem("himmelblau", himmelblau, [0.0, 0.0], [3.0, 2.0], 0.0),
        Problem("wood", wood, [-3.0, -1.0, -3.0, -1.0], [1.0] * 4, 0.0),
        Problem("powell singular", powell_singular, [3.0, -1.0, 0.0, 1.0], [0.0] * 4, 0.0),
        Problem("quadratic cond 1e4", quadratic, [0.0] * 20, quadratic_min.tolist(), quadratic(quadratic_min).item()),
        Problem("θ1²+3θ1θ2+2θ2²", indefinite_quadratic, [1.0, 0.5], None, None, "unbounded"),
        Problem("θ1²+3θ1θ2+2θ2² at saddle", indefinite_quadratic, [0.0, 0.0], None, None, "unbounded"),
        Problem("θ1²-θ2²+θ2⁴ at saddle", symmetric_saddle, [0.0, 0.0], [0.0, 1 / math.sqrt(2)], -0.25, "saddle start"),
        Problem("θ1²-θ2²+θ2⁴ from (1,0)", symmetric_saddle, [1.0, 0.0], [0.0, 1 / math.sqrt(2)], -0.25, "into saddle"),
    ]


# ----------------------------------------------------------------------------- the two methods


@dataclass
class Outcome:
    x: np.ndarray
    loss: float
    iterations: int
    hessian_products: int
    function_evaluations: int
    gradient_evaluations: int
    converged: bool


def run_ours(problem: Problem, gtol: float, max_iter: int) -> Outcome:
    x = torch.tensor(problem.start, dtype=DTYPE, requires_grad=True)
    opt = TrustRegionMinimizer([x], curvature=Hessian(), control=TrustRadius(gtol=gtol))
    iterations = products = evaluations = 0
    converged = False
    while iterations < max_iter:
        opt.step(lambda: problem.function(x))
        result = opt.last_result
        products += result.curvature_products
        evaluations += result.closure_calls
        if result.reason is Reason.CONVERGED:
            converged = True
            break
        iterations += 1
    gradients = iterations + 1 if converged else iterations
    loss = problem.function(x.detach()).item()
    return Outcome(x.detach().numpy().copy(), loss, iterations, products, evaluations, gradients, converged)


def run_scipy(problem: Problem, gtol: float, max_iter: int) -> Outcome:
    function = problem.function

    def fun(x: np.ndarray) -> float:
        return function(torch.from_numpy(x)).item()

    def jac(x: np.ndarray) -> np.ndarray:
        point = torch.from_numpy(x).requires_grad_()
        return torch.autograd.grad(function(point), point)[0].numpy()

    def hessp(x: np.ndarray, p: np.ndarray) -> np.ndarray:  # double backward, as Hessian() does for ours
        point = torch.from_numpy(x).requires_grad_()
        (gradient,) = torch.autograd.grad(function(point), point, create_graph=True)
        return torch.autograd.grad(gradient @ torch.from_numpy(p), point)[0].numpy()

    result = minimize(
        fun,
        np.array(problem.start),
        method="trust-ncg",
        jac=jac,
        hessp=hessp,
        options={"gtol": gtol, "maxiter": max_iter, "initial_trust_radius": 1.0, "max_trust_radius": 1000.0},
    )
    return Outcome(result.x, float(result.fun), result.nit, result.nhev, result.nfev, result.njev, bool(result.success))


def min_curvature(problem: Problem, x: np.ndarray) -> float:
    hessian = torch.autograd.functional.hessian(problem.function, torch.from_numpy(np.asarray(x, dtype=np.float64)))
    return torch.linalg.eigvalsh(hessian)[0].item()


def distance(problem: Problem, x: np.ndarray) -> float:
    """Distance to the known minimiser (to the nearer of ``±`` for the symmetric saddle's pair)."""
    if problem.minimiser is None:
        return math.nan
    target = np.array(problem.minimiser)
    candidates = [target, target * np.array([1.0, -1.0])] if problem.function is symmetric_saddle else [target]
    return min(float(np.linalg.norm(x - c)) for c in candidates)


@dataclass
class Row:
    problem: Problem
    ours: Outcome
    scipy: Outcome

    @property
    def label(self) -> str:
        return f"{self.problem.name} ({len(self.problem.start)}-D)"

    @property
    def product_ratio(self) -> float:
        return self.ours.hessian_products / self.scipy.hessian_products if self.scipy.hessian_products else math.nan

    @property
    def iteration_ratio(self) -> float:
        return self.ours.iterations / self.scipy.iterations if self.scipy.iterations else math.nan


def compare(problems: list[Problem], gtol: float, max_iter: int, unbounded_iter: int) -> list[Row]:
    rows = []
    for problem in problems:
        cap = max_iter if problem.minimiser is not None else unbounded_iter
        rows.append(Row(problem, run_ours(problem, gtol, cap), run_scipy(problem, gtol, cap)))
    return rows


# ----------------------------------------------------------------------------- report


def status(problem: Problem, outcome: Outcome) -> str:
    if not outcome.converged:
        return "max iter"
    return "SADDLE" if min_curvature(problem, outcome.x) < -1e-8 else "converged"


def print_table(rows: list[Row], gtol: float) -> None:
    print(f"scipy {scipy.__version__}, torch {torch.__version__}, float64, gtol {gtol:g}\n")
    header = (
        f"{'problem':<32} | {'iters':>5} {'Hv':>6} {'f,g evals':>10} {'status':>9} {'|x-x*|':>8} {'λmin':>8} | "
        f"{'nit':>5} {'nhev':>6} {'nfev,njev':>10} {'status':>9} {'|x-x*|':>8} {'λmin':>8} | {'Hv':>5} {'iters':>5}"
    )
    print(f"{'':<32} | {'ours (TrustRadius + SteihaugCG)':^62} | {'scipy trust-ncg':^62} | {'ratio':^11}")
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = []
        for outcome in (row.ours, row.scipy):
            evaluations = f"{outcome.function_evaluations},{outcome.gradient_evaluations}"
            cells.append(
                f"{outcome.iterations:5d} {outcome.hessian_products:6d} {evaluations:>10} "
                f"{status(row.problem, outcome):>9} {distance(row.problem, outcome.x):8.1e} "
                f"{min_curvature(row.problem, outcome.x):8.2f}"
            )
        print(f"{row.label:<32} | {cells[0]} | {cells[1]} | {row.product_ratio:5.2f} {row.iteration_ratio:5.2f}")
    both = [r for r in rows if status(r.problem, r.ours) == status(r.problem, r.scipy) == "converged"]
    if both:
        products = math.exp(sum(math.log(r.product_ratio) for r in both) / len(both))
        worst = max(r.product_ratio for r in both)
        print(
            f"\nHessian products, ours / scipy, where both found the minimum ({len(both)} problems): "
            f"geometric mean {products:.2f}, worst {worst:.2f}"
        )
    print(
        "status: 'converged' = the method reported success at a point with λmin >= 0; 'SADDLE' = it reported\n"
        "success where the Hessian has a negative eigenvalue; 'max iter' = no success report within the cap\n"
        "(the unbounded quadratic must end there: its loss goes to -∞)."
    )


# ----------------------------------------------------------------------------- MGH least squares


@dataclass
class LeastSquaresOutcome:
    """One method on one MGH problem: the final ``Σ r²`` and the work."""

    sum_of_squares: float
    residual_evaluations: int
    jacobian_work: str
    success: bool


def run_ours_least_squares(problem: mgh.Problem, formulation: str = "default") -> LeastSquaresOutcome:
    """:func:`trustregion.least_squares` with its defaults (or ``formulation``); every residual call counted."""
    calls = [0]

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return problem.residuals(x)

    x = problem.start_tensor()
    result = trustregion.least_squares(counted, [x], **formulation_options(formulation, x))
    value = problem.sum_of_squares(x)
    linearisations = calls[0] - result.closure_calls
    work = f"{linearisations} J, {result.curvature_products} Jv"
    return LeastSquaresOutcome(value, calls[0], work, problem.reached(value) is not None)


def formulation_options(formulation: str, x: torch.Tensor) -> dict[str, object]:
    """The ``control`` and ``solver`` of a Levenberg-Marquardt formulation (none: the defaults)."""
    if formulation == "damping":
        control = trustregion.LevenbergMarquardt(1e-6, gtol=1e-8, scaled=True, curvature_floor=True)
        return {"control": control, "solver": trustregion.DenseSolver(equilibrate=True)}
    if formulation == "trust-region":
        return {"control": trustregion.ScaledTrustRadius(params=[x], gtol=1e-8), "solver": trustregion.SecularSolver()}
    return {}


def run_scipy_least_squares(problem: mgh.Problem, method: str) -> LeastSquaresOutcome:
    """``scipy.optimize.least_squares(method=...)`` with the autograd Jacobian and its default tolerances."""

    def fun(z: np.ndarray) -> np.ndarray:
        return problem.residuals(torch.from_numpy(z)).numpy()

    def jac(z: np.ndarray) -> np.ndarray:
        return torch.autograd.functional.jacobian(problem.residuals, torch.from_numpy(z)).numpy()

    result = scipy_least_squares(fun, np.array(problem.start), jac=jac, method=method)
    value = 2.0 * float(result.cost)
    return LeastSquaresOutcome(value, int(result.nfev), f"{result.njev} J", problem.reached(value) is not None)


@dataclass
class LeastSquaresRow:
    problem: mgh.Problem
    ours: LeastSquaresOutcome
    lm: LeastSquaresOutcome
    trf: LeastSquaresOutcome

    @property
    def ratio(self) -> float:
        """Ours / scipy lm's residual evaluations."""
        return self.ours.residual_evaluations / self.lm.residual_evaluations


def compare_least_squares(
    problems: tuple[mgh.Problem, ...] = mgh.PROBLEMS, formulation: str = "default"
) -> list[LeastSquaresRow]:
    rows = []
    for problem in problems:
        ours = run_ours_least_squares(problem, formulation)
        outcomes = (ours, *(run_scipy_least_squares(problem, m) for m in ("lm", "trf")))
        rows.append(LeastSquaresRow(problem, *outcomes))
    return rows


def geometric_mean_ratio(rows: list[LeastSquaresRow]) -> tuple[float, int]:
    """The geometric mean of ours / lm's residual evaluations where both reach a published minimum."""
    both = [row.ratio for row in rows if row.ours.success and row.lm.success]
    return math.exp(sum(math.log(r) for r in both) / len(both)), len(both)


def print_least_squares(rows: list[LeastSquaresRow]) -> None:
    print(f"\nMoré-Garbow-Hillstrom 1-19: trustregion.least_squares against scipy least_squares {scipy.__version__}")
    cells = [f"{name + ' Σr²':>14} {'ok':>3} {'r evals':>7} {'Jacobian':>14}" for name in ("ours", "lm", "trf")]
    header = f"{'problem':<24} | " + " | ".join(cells) + " | ours/lm"
    print(header)
    print("-" * len(header))
    for row in rows:
        parts = []
        for outcome in (row.ours, row.lm, row.trf):
            ok = "yes" if outcome.success else "NO"
            parts.append(
                f"{outcome.sum_of_squares:14.7g} {ok:>3} {outcome.residual_evaluations:7d} {outcome.jacobian_work:>14}"
            )
        label = f"{row.problem.number:2d} {row.problem.name}"
        print(f"{label:<24} | " + " | ".join(parts) + f" | {row.ratio:7.2f}")
    mean, count = geometric_mean_ratio(rows)
    print(f"\nresidual evaluations, ours / scipy lm, where both reach f* ({count} problems): geometric mean {mean:.2f}")
    missed = [row.problem.name for row in rows if row.lm.success and not row.ours.success]
    print(f"problems scipy lm solves and ours does not: {', '.join(missed) or 'none'}")


def main(argv: list[str] | None = None) -> list[Row] | list[LeastSquaresRow]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="quick run: Rosenbrock 10-D instead of 100-D")
    parser.add_argument("--gtol", type=float, default=1e-8, help="gradient-norm tolerance of both (default 1e-8)")
    parser.add_argument("--max-iter", type=int, default=2000, help="iteration cap of both (default 2000)")
    parser.add_argument("--only", choices=("trust-ncg", "mgh"), help="run one part only")
    parser.add_argument(
        "--formulation",
        choices=("default", "damping", "trust-region"),
        default="default",
        help="least squares: the defaults, or one Levenberg-Marquardt formulation",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows: list[Row] = []
    if args.only != "mgh":
        problems = zoo(rosenbrock_dim=10 if args.smoke else 100)
        rows = compare(problems, args.gtol, args.max_iter, unbounded_iter=40)
        print_table(rows, args.gtol)
    if args.only != "trust-ncg":
        least_squares_rows = compare_least_squares(formulation=args.formulation)
        print_least_squares(least_squares_rows)
        if args.only == "mgh":
            return least_squares_rows
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
