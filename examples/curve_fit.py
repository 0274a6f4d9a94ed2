"""Nonlinear least squares: fit a damped oscillation with Levenberg-Marquardt.

The model ``y = a · exp(-b t) · cos(ω t + φ)`` is fitted to noisy samples by minimising
``½ ‖r(θ)‖²`` with residuals ``r_i = model(t_i; θ) - y_i``. The curvature is the
Gauss-Newton matrix ``JᵀJ`` of the residuals (``ResidualGaussNewton``), the step solves
``(JᵀJ + μI) s = -∇loss`` by CG, and ``LevenbergMarquardt`` adapts the damping ``μ`` from
the ratio of actual to predicted reduction. The same fit is then repeated as a
trust-region Gauss-Newton method (``TrustRadius`` and Steihaug-Toint CG) for comparison.

Run: ``python examples/curve_fit.py`` (``--samples`` and ``--noise`` change the data).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from trustregion import (
    LevenbergMarquardt,
    RadiusControl,
    Reason,
    ResidualGaussNewton,
    TrustRadius,
    TrustRegionMinimizer,
)

TRUE_PARAMETERS = (2.5, 0.3, 1.7, 0.4)
"""Amplitude ``a``, decay ``b``, angular frequency ``ω``, phase ``φ``."""
INITIAL_GUESS = (1.0, 0.5, 2.2, 1.0)
NAMES = ("amplitude", "decay", "frequency", "phase")


def damped_oscillation(t: torch.Tensor, a, b, omega, phi) -> torch.Tensor:
    return a * torch.exp(-b * t) * torch.cos(omega * t + phi)


def make_data(samples: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    t = torch.linspace(0.0, 10.0, samples, dtype=torch.float64)
    clean = damped_oscillation(t, *(torch.tensor(v, dtype=torch.float64) for v in TRUE_PARAMETERS))
    return t, clean + noise * torch.randn(samples, generator=generator, dtype=torch.float64)


@dataclass
class Fit:
    parameters: list[float]
    loss: float
    steps: int
    rejected_steps: int
    curvature_products: int
    converged: bool


def fit(t: torch.Tensor, y: torch.Tensor, control: RadiusControl, max_steps: int = 200) -> Fit:
    """Minimise ``½ ‖model(t; θ) - y‖²`` from :data:`INITIAL_GUESS` with the radius ``control``."""
    params = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in INITIAL_GUESS]
    least_squares = ResidualGaussNewton(lambda a, b, omega, phi: damped_oscillation(t, a, b, omega, phi) - y)
    opt = TrustRegionMinimizer(params, curvature=least_squares, control=control)
    closure = least_squares.closure(params)
    steps = rejected = products = 0
    for _ in range(max_steps):
        opt.step(closure)
        products += opt.last_result.curvature_products
        if opt.last_result.reason is Reason.CONVERGED:
            break
        steps += 1
        rejected += not opt.last_result.accepted
    return Fit(
        parameters=[p.item() for p in params],
        loss=closure().item(),
        steps=steps,
        rejected_steps=rejected,
        curvature_products=products,
        converged=opt.last_result.reason is Reason.CONVERGED,
    )


def main(argv: list[str] | None = None) -> dict[str, Fit]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="number of samples (default 200)")
    parser.add_argument("--noise", type=float, default=0.05, help="noise standard deviation (default 0.05)")
    parser.add_argument("--gtol", type=float, default=1e-8, help="gradient-norm tolerance (default 1e-8)")
    args = parser.parse_args(argv)
    t, y = make_data(args.samples, args.noise)
    fits = {
        "levenberg-marquardt": fit(t, y, LevenbergMarquardt(gtol=args.gtol)),
        "trust-region gauss-newton": fit(t, y, TrustRadius(gtol=args.gtol)),
    }
    print(f"{args.samples} samples of a·exp(-b t)·cos(ω t + φ), noise σ = {args.noise}\n")
    blank = f"{'':>6} {'':>9} {'':>14} {'':>10}"
    print(f"{'method':>26} {'steps':>6} {'rejected':>9} {'JᵀJ products':>14} {'½‖r‖²':>10}  " + _row(NAMES, "{:>10}"))
    print(f"{'truth':>26} {blank}  " + _row(TRUE_PARAMETERS, "{:10.4f}"))
    print(f"{'initial guess':>26} {blank}  " + _row(INITIAL_GUESS, "{:10.4f}"))
    for name, r in fits.items():
        status = "" if r.converged else "  (not converged)"
        counts = f"{r.steps:6d} {r.rejected_steps:9d} {r.curvature_products:14d} {r.loss:10.5f}"
        print(f"{name:>26} {counts}  " + _row(r.parameters, "{:10.4f}") + status)
    return fits


def _row(values, template: str) -> str:
    return " ".join(template.format(v) for v in values)


if __name__ == "__main__":
    main()
