"""Trust-region Newton-CG on the Rosenbrock function, and an escape from a saddle point.

``TrustRegionMinimizer(params, curvature=Hessian(), control=TrustRadius())`` with a
loss-only closure is the classic trust-region Newton-CG method: Steihaug-Toint CG on the
exact Hessian inside a Euclidean ball whose radius follows the ratio of actual to
predicted reduction. The loop stops when a step reports ``Reason.CONVERGED``: the
gradient norm is below ``gtol`` *and* a Lanczos probe found no negative curvature.

The second run starts at the saddle point of ``θ1² - θ2² + θ2⁴`` where the gradient is
exactly zero: the probe finds the negative curvature and the step leaves the saddle.

Run: ``python examples/newton_cg.py`` (``--dim 100`` for the 100-dimensional Rosenbrock).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trustregion import Hessian, RadiusStepResult, Reason, TrustRadius, TrustRegionMinimizer


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    """``Σ 100 (x_{i+1} - x_i²)² + (1 - x_i)²``, minimum 0 at ``(1, ..., 1)``."""
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def saddle(x: torch.Tensor) -> torch.Tensor:
    """``θ1² - θ2² + θ2⁴``: a saddle at 0, minima ``-1/4`` at ``(0, ±1/√2)``."""
    return x[0] ** 2 - x[1] ** 2 + x[1] ** 4


@dataclass
class Run:
    """What :func:`minimise` did."""

    x: torch.Tensor
    loss: float
    steps: int
    curvature_products: int
    converged: bool
    history: list[RadiusStepResult]


def minimise(
    function: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    *,
    gtol: float = 1e-8,
    initial_radius: float = 1.0,
    max_steps: int = 1000,
) -> Run:
    """Trust-region Newton-CG from ``start`` until ``Reason.CONVERGED`` or ``max_steps`` steps.

    ``steps`` counts the steps that proposed a point (accepted or rejected), as
    :func:`scipy.optimize.minimize` counts ``nit``; the final ``CONVERGED`` report is not one.
    """
    x = start.clone().requires_grad_()
    opt = TrustRegionMinimizer([x], curvature=Hessian(), control=TrustRadius(initial_radius, gtol=gtol))
    history: list[RadiusStepResult] = []
    for _ in range(max_steps):
        opt.step(lambda: function(x))
        history.append(opt.last_result)
        if opt.last_result.reason is Reason.CONVERGED:
            break
    converged = history[-1].reason is Reason.CONVERGED
    return Run(
        x=x.detach(),
        loss=function(x.detach()).item(),
        steps=len(history) - converged,
        curvature_products=sum(r.curvature_products for r in history),
        converged=converged,
        history=history,
    )


def print_history(run: Run, limit: int) -> None:
    print(f"{'step':>4} {'loss':>12} {'|grad|':>10} {'radius':>9} {'rho':>8} {'solver':>18}  decision")
    for index, r in enumerate(run.history[:limit]):
        rho = f"{r.improvement_ratio:8.3f}" if r.expected_improvement == r.expected_improvement else f"{'-':>8}"
        solver = r.solver_reason.value if r.solver_reason else "-"
        print(
            f"{index:4d} {r.loss_before:12.4e} {r.gradient_norm:10.2e} {r.radius:9.3g} {rho} {solver:>18}  "
            f"{r.reason.value}"
        )
    if len(run.history) > limit:
        print(f"  ... {len(run.history) - limit} more steps")


def main(argv: list[str] | None = None) -> dict[str, Run]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2, help="Rosenbrock dimension (even; default 2)")
    parser.add_argument("--gtol", type=float, default=1e-8, help="gradient-norm tolerance (default 1e-8)")
    parser.add_argument("--show", type=int, default=12, help="steps of the history to print")
    args = parser.parse_args(argv)
    if args.dim < 2 or args.dim % 2:
        parser.error("--dim must be an even number >= 2")

    start = torch.tensor([-1.2, 1.0] * (args.dim // 2), dtype=torch.float64)
    rosen = minimise(rosenbrock, start, gtol=args.gtol)
    print(f"Rosenbrock, n = {args.dim}, start (-1.2, 1, ...)")
    print_history(rosen, args.show)
    print(
        f"converged: {rosen.converged} after {rosen.steps} steps and {rosen.curvature_products} Hessian products; "
        f"loss {rosen.loss:.3e}, max |x - 1| = {(rosen.x - 1).abs().max().item():.2e}\n"
    )

    escape = minimise(saddle, torch.zeros(2, dtype=torch.float64), gtol=args.gtol, initial_radius=0.5)
    first = escape.history[0]
    print("Saddle θ1² - θ2² + θ2⁴ from its stationary point (0, 0):")
    print(
        f"  step 0: gradient norm {first.gradient_norm:g}, Lanczos min curvature {first.min_curvature:.3f} "
        f"-> {first.solver_reason.value} step, {first.reason.value}"
    )
    print(
        f"  converged: {escape.converged} at x = {escape.x.tolist()} with loss {escape.loss:.6f} "
        f"(minimum -0.25) after {escape.steps} steps"
    )
    return {"rosenbrock": rosen, "saddle": escape}


if __name__ == "__main__":
    main()
