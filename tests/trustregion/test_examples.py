"""The non-RL examples run in their default (quick) configuration and reach what their docs claim."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from project_files import load_script
from scipy.optimize import least_squares

from trustregion import Reason
from trustregion.result import SolverReason


def load(name: str):
    return load_script(f"examples/{name}.py")


def test_newton_cg_example(capsys: pytest.CaptureFixture[str]) -> None:
    runs = load("newton_cg").main([])
    rosenbrock, saddle = runs["rosenbrock"], runs["saddle"]
    assert rosenbrock.converged and rosenbrock.history[-1].reason is Reason.CONVERGED
    torch.testing.assert_close(rosenbrock.x, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-8)
    first = saddle.history[0]
    assert first.gradient_norm == 0.0 and first.solver_reason is SolverReason.NEGATIVE_CURVATURE and first.accepted
    assert saddle.converged and saddle.loss == pytest.approx(-0.25, abs=1e-12)
    assert "converged: True" in capsys.readouterr().out


def test_curve_fit_example_matches_scipy_levenberg_marquardt(capsys: pytest.CaptureFixture[str]) -> None:
    example = load("curve_fit")
    fits = example.main([])
    t, y = (v.numpy() for v in example.make_data(200, 0.05))

    def residuals(p: np.ndarray) -> np.ndarray:
        return p[0] * np.exp(-p[1] * t) * np.cos(p[2] * t + p[3]) - y

    reference = least_squares(residuals, example.INITIAL_GUESS, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    for fit in fits.values():
        assert fit.converged
        np.testing.assert_allclose(fit.parameters, reference.x, rtol=1e-6, atol=1e-8)
        assert fit.loss == pytest.approx(0.5 * float(reference.fun @ reference.fun), rel=1e-10)
        assert max(abs(a - b) for a, b in zip(fit.parameters, example.TRUE_PARAMETERS, strict=True)) < 0.05
    assert "levenberg-marquardt" in capsys.readouterr().out


def test_natural_gradient_classifier_needs_fewer_steps_than_adam(capsys: pytest.CaptureFixture[str]) -> None:
    (runs,) = load("natural_gradient_classifier").main([])
    natural, *adams = runs
    assert natural.steps is not None and natural.final_accuracy >= 0.99
    assert all(adam.steps is not None for adam in adams)  # the sweep is fair: every Adam run gets there too
    assert natural.steps * 2 <= min(adam.steps for adam in adams)
    out = capsys.readouterr().out
    assert "natural gradient / fastest Adam" in out and not math.isnan(natural.seconds)
