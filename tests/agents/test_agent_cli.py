"""The command line end to end on a tiny budget: every run artefact, resume, evaluation, NPG;
and atomic checkpoint writes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents import NPG, TRPO
from agents.common import checkpoint
from agents.common.checkpoint import atomic_write_bytes
from agents.common.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--n-steps",
    "128",
    "--num-envs",
    "2",
    "--hidden-sizes",
    "16",
    "16",
    "--checkpoint-interval",
    "1",
    "--eval-episodes",
    "2",
]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=True
    )


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "progress.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_trpo_cli_writes_every_artefact_resumes_and_evaluates(tmp_path, capsys):
    result = run_cli("-m", "agents.trpo", "--total-steps", "512", "--seed", "3", *TINY, cwd=tmp_path)
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    run_dir = runs[0]
    assert run_dir.name.startswith("CartPole-v1__trpo__3__")
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["n_steps"] == 128 and config["total_steps"] == 512 and config["algorithm"] == "trpo"
    assert [int(row["global_step"]) for row in csv_rows(run_dir)] == [256, 512]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoint.pt").stat().st_size > 0
    assert (run_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluation = (run_dir / "evaluation.txt").read_text()
    assert evaluation.startswith("final evaluation: env=CartPole-v1 algo=trpo seed=3 steps=512 episodes=2")
    assert "mean_return=" in result.stdout
    assert not list(run_dir.glob(".*.tmp"))  # no temporary files left behind

    assert main(TRPO, ["--resume", str(run_dir), "--total-steps", "1024", "--no-progress"]) == 0
    assert [int(row["global_step"]) for row in csv_rows(run_dir)] == [256, 512, 768, 1024]
    assert json.loads((run_dir / "config.json").read_text())["total_steps"] == 1024
    assert "steps=1024" in (run_dir / "evaluation.txt").read_text()

    assert main(TRPO, ["--eval", str(run_dir), "--eval-episodes", "3"]) == 0
    assert "steps=1024 episodes=3" in capsys.readouterr().out


def test_resume_rejects_changed_hyperparameters(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(TRPO, ["--total-steps", "256", "--run-dir", str(run_dir), "--no-progress", *TINY]) == 0
    assert main(TRPO, ["--resume", str(run_dir), "--max-kl", "0.5"]) == 2
    assert "--max-kl" in capsys.readouterr().err


def test_npg_cli_and_bad_flag(tmp_path, capsys):
    run_dir = tmp_path / "npg"
    assert (
        main(NPG, ["--env", "Pendulum-v1", "--total-steps", "256", "--run-dir", str(run_dir), "--no-progress", *TINY])
        == 0
    )
    rows = csv_rows(run_dir)
    assert all(row["backtracks"] == "0" and row["step_fraction"] == "1.0" for row in rows)
    assert json.loads((run_dir / "config.json").read_text())["config"]["line_search"] is False
    assert "algo=npg" in (run_dir / "evaluation.txt").read_text()
    assert main(TRPO, ["--max-kl", "-1", "--total-steps", "256", "--no-progress"]) == 2
    assert "max_kl must be" in capsys.readouterr().err


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    atomic_write_bytes(target, b"old")

    def failing_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]  # the temporary file was removed


def test_progress_bar_counts_whole_iterations_and_ends_once(tmp_path, capsys):
    """--total-steps 300 with 2 × 128 steps per iteration runs 512 steps: the bar says so, once at 100%."""
    argv = [
        "--total-steps",
        "300",
        "--run-dir",
        str(tmp_path / "run"),
        "--n-steps",
        "128",
        "--num-envs",
        "2",
        "--eval-episodes",
        "2",
    ]
    assert main(TRPO, [*argv, "--hidden-sizes", "16", "16"]) == 0
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()]
    bars = [line for line in lines if "step/s" in line or "?step" in line]
    assert bars and all("/512" in line for line in bars) and "512/512" in bars[-1]
    assert sum("100%" in line for line in bars) == 1
