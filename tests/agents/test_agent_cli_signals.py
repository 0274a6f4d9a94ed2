"""SIGINT and SIGTERM during training: the command line finishes the iteration (a second signal
abandons it), writes a checkpoint of a consistent state, prints one line with the resume command
and exits 130 / 143; resuming then continues bit for bit like an uninterrupted run."""

from __future__ import annotations

import csv
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_agent_trpo import assert_states_equal, full_state

from agents import TRPO
from agents.common.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--n-steps", "64", "--num-envs", "2", "--hidden-sizes", "16", "16", "--eval-episodes", "2", "--no-progress"]
TIMING_COLUMNS = ("steps_per_second", "rollout_seconds", "policy_seconds", "value_seconds")
TIMEOUT = 120.0


def start_cli(run_dir: Path, *args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "agents.trpo", "--run-dir", str(run_dir), *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(process: subprocess.Popen, run_dir: Path, rows: int) -> None:
    """Until ``progress.csv`` has ``rows`` iterations logged (bounded by TIMEOUT)."""
    deadline = time.monotonic() + TIMEOUT
    path = run_dir / "progress.csv"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended before it was interrupted: {process.communicate()}")
        if path.exists() and len(path.read_text().splitlines()) > rows:
            return
        time.sleep(0.01)
    process.kill()
    pytest.fail("no iteration logged in time")


def finish(process: subprocess.Popen) -> tuple[str, str]:
    try:
        return process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail("the interrupted run did not exit")


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "progress.csv").open() as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(handle)]


def resume_line(err: str, run_dir: Path) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("run directory:")]
    assert len(lines) == 1, err
    assert lines[0].endswith(f"python -m agents.trpo --resume {run_dir}"), lines[0]
    return lines[0]


def interrupt_after_first_iteration(run_dir: Path, signum: int, cwd: Path) -> tuple[int, str, str]:
    """Start a run with a budget far beyond the test (only the signal ends it; no periodic checkpoint
    is due), signal it once an iteration is logged; returns the exit code and output."""
    process = start_cli(run_dir, "--total-steps", "10000000", "--checkpoint-interval", "1000", *TINY, cwd=cwd)
    wait_for_rows(process, run_dir, 1)
    process.send_signal(signum)
    out, err = finish(process)
    return process.returncode, out, err


def check_saved_after_whole_iterations(run_dir: Path) -> int:
    saved = TRPO.load(run_dir)
    done = saved.global_step
    saved.close()
    assert done >= 128 and done % 128 == 0  # whole iterations: the one in progress was finished
    assert [int(row["global_step"]) for row in csv_rows(run_dir)] == list(range(128, done + 1, 128))
    assert not (run_dir / "evaluation.txt").exists()
    return done


def test_sigint_stops_after_the_iteration_saves_and_resumes_bit_for_bit(tmp_path):
    interrupted = tmp_path / "interrupted"
    code, out, err = interrupt_after_first_iteration(interrupted, signal.SIGINT, tmp_path)
    assert code == 130, err
    assert "SIGINT" in resume_line(err, interrupted) and out == ""
    done = check_saved_after_whole_iterations(interrupted)

    target = done + 256  # two iterations more, through the new --total-steps
    assert main(TRPO, ["--resume", str(interrupted), "--total-steps", str(target), "--no-progress"]) == 0
    straight = tmp_path / "straight"
    argv = ["--run-dir", str(straight), "--total-steps", str(target), "--checkpoint-interval", "1000", *TINY]
    assert main(TRPO, argv) == 0
    resumed, uninterrupted = TRPO.load(interrupted), TRPO.load(straight)
    assert resumed.global_step == uninterrupted.global_step == target
    assert_states_equal(full_state(resumed), full_state(uninterrupted))
    assert csv_rows(interrupted) == csv_rows(straight)
    assert (interrupted / "evaluation.txt").read_text() == (straight / "evaluation.txt").read_text()
    resumed.close()
    uninterrupted.close()


def test_sigterm_stops_the_same_way_with_exit_code_143(tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = interrupt_after_first_iteration(run_dir, signal.SIGTERM, tmp_path)
    assert code == 143, err
    assert "SIGTERM" in resume_line(err, run_dir) and out == ""
    check_saved_after_whole_iterations(run_dir)


def test_ctrl_c_to_the_whole_process_group_with_async_workers(tmp_path):
    """A terminal's Ctrl-C reaches the environment worker processes too: they ignore it, and the
    main process finishes its iteration, saves and stops them."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "agents.trpo", "--run-dir", str(run_dir), "--total-steps", "10000000"]
    command += ["--vectorization-mode", "async", "--checkpoint-interval", "1000", *TINY]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_for_rows(process, run_dir, 1)
    os.killpg(process.pid, signal.SIGINT)
    _, err = finish(process)
    assert process.returncode == 130, err
    assert "SIGINT" in resume_line(err, run_dir)
    check_saved_after_whole_iterations(run_dir)


def test_a_second_signal_abandons_the_iteration_and_keeps_the_one_before(tmp_path):
    """Iterations of 8192 steps: the second SIGINT lands inside one; the checkpoint is the state
    after the iteration before, exactly that of a straight run of that many steps."""
    run_dir = tmp_path / "run"
    options = ["--n-steps", "4096", "--num-envs", "2", "--hidden-sizes", "16", "16", "--no-progress"]
    process = start_cli(run_dir, "--total-steps", "10000000", "--checkpoint-interval", "1000", *options, cwd=tmp_path)
    wait_for_rows(process, run_dir, 1)
    time.sleep(0.05)  # into the second iteration (a second or more)
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = finish(process)
    assert process.returncode == 130, err
    assert "mid-iteration" in resume_line(err, run_dir)
    saved = TRPO.load(run_dir)
    assert saved.global_step % 8192 == 0 and saved.global_step >= 8192
    rows = csv_rows(run_dir)
    assert int(rows[-1]["global_step"]) >= saved.global_step
    straight = TRPO("CartPole-v1", seed=0, n_steps=4096, num_envs=2, hidden_sizes=(16, 16), checkpoint_interval=1000)
    straight.learn(saved.global_step)
    assert_states_equal(full_state(saved), full_state(straight))
    saved.close()
    straight.close()


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="SIGINT is ignored while building")
def test_ctrl_c_while_the_agent_is_built_exits_130_and_writes_nothing(tmp_path, monkeypatch, capsys):
    class Interrupted(TRPO):
        def __init__(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of building
            super().__init__(*args, **kwargs)

    monkeypatch.chdir(tmp_path)
    assert main(Interrupted, ["--total-steps", "128", *TINY]) == 130
    assert "nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
