"""Every benchmark script runs in its smoke mode, so none of them rots.

These check that the scripts run and print their tables; the numbers themselves
are measured by running the scripts in full (docs/benchmarks.md). A smoke run writes only
into the test's temporary directory: the places the scripts write by default are left as they were.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from project_files import load_script

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
RESULTS, PLOTS = BENCHMARKS / "results", BENCHMARKS.parent / "docs" / "img" / "returns"
DEFAULT_OUTPUTS = [
    RESULTS / "tmp",
    PLOTS,
    RESULTS / "user_envs",
    *(PLOTS.parent / f"{name}.png" for name in ("taxi_masks", "minatar_curve")),
]
"""Where the scripts write when not told otherwise (returns.py's smoke mode wrote into results/tmp)."""

SMOKE_COMMANDS = {  # script and arguments ({tmp}: the test's temporary directory), a row label of its table
    "curvature": (["curvature.py", "--smoke"], "GaussNewton"),
    "scipy_parity": (["scipy_parity.py", "--smoke"], "rosenbrock"),
    "throughput": (["throughput.py", "--smoke"], "ours (defaults)"),
    "returns": (["returns.py", "--smoke", "--results", "{tmp}/results"], "CartPole-v1"),
    "scaling": (["scaling.py", "--smoke"], "CartPole-v1"),
    "pinn": (["pinn.py", "--smoke", "--plot", "{tmp}/pinn.png"], "engd"),
    "preconditioning": (["preconditioning.py", "--quick"], "kfac"),
    "user_envs": (["user_envs.py", "--smoke"], "Taxi-v4"),
}


def default_outputs():
    """Every file at the scripts' default output places, with its size and modification time."""
    files = {}
    for place in DEFAULT_OUTPUTS:
        for path in [place, *place.rglob("*")] if place.is_dir() else [place]:
            if path.is_file():
                files[path] = (path.stat().st_size, path.stat().st_mtime_ns)
    return files


@pytest.mark.parametrize("name", sorted(SMOKE_COMMANDS))
def test_benchmark_smoke_mode_runs_and_prints_a_table(name, tmp_path):
    (script, *arguments), row_label = SMOKE_COMMANDS[name]
    before = default_outputs()
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *(a.format(tmp=tmp_path) for a in arguments)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert row_label in completed.stdout, completed.stdout[-3000:]
    assert default_outputs() == before  # nothing written into the source tree
    if name == "returns":
        written = sorted(path.name for path in (tmp_path / "results" / "tmp").glob("*.json"))
        assert written == ["ours__CartPole-v1__0.json", "ours__CartPole-v1__1.json"]


def test_returns_smoke_without_results_uses_a_temporary_folder_it_deletes(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    returns = load_script("benchmarks/returns.py", "returns_benchmark")
    seen = []
    monkeypatch.setattr(returns, "run", lambda parser, args: seen.append((args.results, args.results.is_dir())))
    returns.main(["--smoke"])
    ((folder, existed),) = seen
    assert existed and not folder.exists() and BENCHMARKS.parent not in folder.parents
