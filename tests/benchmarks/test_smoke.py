"""Every benchmark script runs in its smoke mode, so none of them rots.

These check that the scripts run and print their tables; the numbers themselves
are measured by running the scripts in full (docs/benchmarks.md).
"""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

SMOKE_COMMANDS = {  # script and arguments, and a row label every table of that script has
    "curvature": (["curvature.py", "--smoke"], "GaussNewton"),
    "scipy_parity": (["scipy_parity.py", "--smoke"], "rosenbrock"),
    "throughput": (["throughput.py", "--smoke"], "ours (defaults)"),
    "returns": (["returns.py", "--smoke"], "CartPole-v1"),
}


@pytest.mark.parametrize("name", sorted(SMOKE_COMMANDS))
def test_benchmark_smoke_mode_runs_and_prints_a_table(name, tmp_path):
    (script, *arguments), row_label = SMOKE_COMMANDS[name]
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *arguments],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert row_label in completed.stdout, completed.stdout[-3000:]
