"""User errors at the command line: one line on stderr with the fix, exit code 2, no traceback and
nothing written; run directories never overwritten nor shared; resume semantics; ``--help``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from agents import NPG, TRPO
from agents.common import cli
from agents.common.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--n-steps", "64", "--num-envs", "2", "--hidden-sizes", "16", "16", "--eval-episodes", "2", "--no-progress"]
USAGE_HINT = "usage: python -m agents.trpo [options]; see --help"


def run_cli(*args: str, cwd: Path, module: str = "agents.trpo", timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("python -m agents.")
    return lines[0]


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny TRPO run (2 iterations of 128 steps); tests copy it before changing anything."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert main(TRPO, ["--total-steps", "256", "--run-dir", str(run_dir), "--seed", "4", *TINY]) == 0
    return run_dir


def copy_run(run_dir: Path, destination: Path) -> Path:
    import shutil

    shutil.copytree(run_dir, destination)
    return destination


# ---------------------------------------------------------------------------------------- one line, exit 2
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--env", "CartPol-v1"], "did you mean 'CartPole-v1'"),
        (["--env", "CartPole-v9"], "CartPole-v1"),
        (["--total-steps", "-5"], "--total-steps"),
        (["--total-steps", "0"], "--total-steps"),
        (["--num-envs", "x"], USAGE_HINT),
        (["--env-kwargs", "{bad"], "--env-kwargs"),
        (["--env-kwargs", "[1, 2]"], "JSON object"),
        (["--env-kwargs", '{"gravityy": 9.8}'], "gravityy"),
        (["--max-kl", "x"], USAGE_HINT),
        (["--max-kl", "-1"], "max_kl must be > 0"),
        (["--num-envs", "0"], "num_envs"),
        (["--curvature", "fisher"], "gauss-newton"),
        (["--seed", "-1"], "--seed"),
        (["--bogus"], USAGE_HINT),
        (["--env", "tests/TextObservation-v0"], "Text"),
        (["--resume", "no/such/run"], "no such run directory"),
        (["--eval", "no/such/run"], "no such run directory"),
        (["--resume", "somewhere", "--eval", "elsewhere"], "--resume"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2_and_write_nothing(argv, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    training = argv[0] not in ("--resume", "--eval")  # a tiny budget, should the error not come
    assert main(TRPO, [*TINY, "--total-steps", "128", *argv] if training else argv) == 2
    captured = capsys.readouterr()
    assert expected in one_error_line(captured.err)
    assert list(tmp_path.iterdir()) == []  # no run directory left behind


def test_argparse_errors_print_a_usage_hint_not_the_usage(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(TRPO, ["--max-kl"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert USAGE_HINT in line and "--hidden-sizes" not in line


def test_through_the_real_command_line(tmp_path):
    """The process: exit code 2, one line, no traceback, nothing written."""
    result = run_cli("--env", "CartPol-v1", cwd=tmp_path)
    assert result.returncode == 2 and "did you mean 'CartPole-v1'" in one_error_line(result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cli.UsageError, match="CartPole-v1"):
        main(TRPO, ["--env", "CartPol-v1", "--debug"])


def test_the_python_api_raises_the_same_message(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for argv, kwargs in (
        (["--env", "CartPol-v1"], {"env": "CartPol-v1"}),
        (["--env-kwargs", '{"gravityy": 9.8}'], {"env_kwargs": {"gravityy": 9.8}}),
        (["--max-kl", "-1"], {"max_kl": -1.0}),
    ):
        assert main(TRPO, argv) == 2
        line = one_error_line(capsys.readouterr().err)
        with pytest.raises(ValueError) as raised:
            TRPO(**kwargs)
        assert line == f"python -m agents.trpo: error: {raised.value}"


@pytest.mark.parametrize(("env", "module", "install"), [("Hopper-v5", "mujoco", 'pip install "gymnasium[mujoco]"')])
def test_a_missing_optional_dependency_names_the_install_command(env, module, install, tmp_path):
    """The dependency is made unimportable in a fresh interpreter, so this holds wherever it is installed."""
    script = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from agents import TRPO\n"
        "from agents.common.cli import main\n"
        "try:\n"
        f"    TRPO({env!r})\n"
        "except ValueError as error:\n"
        "    print(error)\n"
        f"raise SystemExit(main(TRPO, ['--env', {env!r}, '--no-progress']))\n"
    )
    env_vars = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env_vars, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert install in line and env in line
    assert result.stdout.strip() == line.removeprefix("python -m agents.trpo: error: ")  # the API's ValueError
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- run directories
def test_an_existing_run_directory_is_refused_and_left_untouched(finished_run, tmp_path, capsys):
    run_dir = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run_dir)
    assert main(TRPO, ["--env", "Pendulum-v1", "--run-dir", str(run_dir), "--total-steps", "128", *TINY]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--resume {run_dir}" in line
    assert snapshot(run_dir) == before
    (tmp_path / "file").write_text("x")
    assert main(TRPO, ["--run-dir", str(tmp_path / "file"), *TINY]) == 2
    assert "is a file" in one_error_line(capsys.readouterr().err)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(TRPO, ["--run-dir", str(other), *TINY]) == 2
    assert (other / "notes.txt").read_text() == "mine" and len(list(other.iterdir())) == 1


def test_an_empty_run_directory_is_used(tmp_path):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    assert main(TRPO, ["--run-dir", str(run_dir), "--total-steps", "128", *TINY]) == 0
    assert (run_dir / "checkpoint.pt").exists()


def test_default_run_directories_never_collide(tmp_path, monkeypatch):
    """Same env, seed and second: two runs get two directories (a random suffix, created atomically)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_timestamp", lambda: "20250101-120000")
    suffixes = iter(["aaaaaa", "aaaaaa", "bbbbbb"])  # the second run first draws a taken name
    monkeypatch.setattr(cli, "_suffix", lambda: next(suffixes))
    for _ in range(2):
        assert main(TRPO, ["--total-steps", "128", "--seed", "1", *TINY]) == 0
    runs = sorted(path.name for path in (tmp_path / "runs").iterdir())
    assert runs == ["CartPole-v1__trpo__1__20250101-120000__aaaaaa", "CartPole-v1__trpo__1__20250101-120000__bbbbbb"]
    for name in runs:
        assert json.loads((tmp_path / "runs" / name / "config.json").read_text())["total_steps"] == 128


# ---------------------------------------------------------------------------------------- resume
def test_resume_refuses_every_flag_given_by_name(finished_run, tmp_path, capsys):
    run_dir = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run_dir)
    argv = ["--resume", str(run_dir), "--seed", "4", "--env", "CartPole-v1", "--max-kl", "0.01", "--no-normalize-obs"]
    assert main(TRPO, [*argv, "--run-dir", str(tmp_path / "x"), "--total-steps", "1024"]) == 2
    line = one_error_line(capsys.readouterr().err)
    for flag in ("--seed", "--env", "--max-kl", "--no-normalize-obs", "--run-dir"):
        assert flag in line.split("drop")[1].split("(")[0], line
    assert "--total-steps" in line.split("(only")[1]  # allowed, and said so
    assert snapshot(run_dir) == before and not (tmp_path / "x").exists()


def test_eval_refuses_training_flags(finished_run, capsys):
    assert main(TRPO, ["--eval", str(finished_run), "--seed", "3"]) == 2
    assert "--seed" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("total_steps", [None, "128", "256"])
def test_resume_to_a_target_already_reached_says_so_and_rewrites_nothing(total_steps, finished_run, tmp_path, capsys):
    run_dir = copy_run(finished_run, tmp_path / "run")
    before = snapshot(run_dir)
    extra = [] if total_steps is None else ["--total-steps", total_steps]
    assert main(TRPO, ["--resume", str(run_dir), *extra]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "already taken 256 steps" in line and "nothing to do" in line
    assert snapshot(run_dir) == before


def test_resume_sets_the_new_target(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path / "run")
    assert main(TRPO, ["--resume", str(run_dir), "--total-steps", "384", "--no-progress"]) == 0
    assert json.loads((run_dir / "config.json").read_text())["total_steps"] == 384
    assert TRPO.load(run_dir).global_step == 384


@pytest.mark.parametrize(
    ("damage", "extra", "expected"),
    [
        (lambda run: (run / "checkpoint.pt").unlink(), ["--total-steps", "512"], "no checkpoint"),
        (lambda run: (run / "checkpoint.pt").write_bytes(b""), ["--total-steps", "512"], "checkpoint.pt"),
        (
            lambda run: (run / "checkpoint.pt").write_bytes(b"not a checkpoint"),
            ["--total-steps", "512"],
            "checkpoint.pt",
        ),
        (lambda run: (run / "progress.csv").write_text("garbage\n1,2\n"), ["--total-steps", "512"], "progress.csv"),
        (lambda run: (run / "config.json").unlink(), [], "--total-steps"),
    ],
    ids=["no-checkpoint", "empty-checkpoint", "garbage-checkpoint", "damaged-csv", "no-config"],
)
def test_resume_of_a_damaged_run_is_one_line_and_rewrites_nothing(
    damage, extra, expected, finished_run, tmp_path, capsys
):
    run_dir = copy_run(finished_run, tmp_path / "run")
    damage(run_dir)
    before = snapshot(run_dir)
    assert main(TRPO, ["--resume", str(run_dir), "--no-progress", *extra]) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert snapshot(run_dir) == before


def test_resume_with_a_damaged_config_takes_the_target_from_the_command_line(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path / "run")
    (run_dir / "config.json").write_text("{")
    assert main(TRPO, ["--resume", str(run_dir), "--total-steps", "384", "--no-progress"]) == 0
    assert TRPO.load(run_dir).global_step == 384


def test_eval_of_a_damaged_checkpoint_is_one_line(finished_run, tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    assert main(TRPO, ["--eval", str(garbage)]) == 2
    assert str(garbage) in one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------- NPG labels
def test_npg_evaluates_a_trpo_run_as_trpo_and_refuses_to_resume_it(finished_run, tmp_path, capsys):
    assert main(NPG, ["--eval", str(finished_run), "--eval-episodes", "2"]) == 0
    assert "algo=trpo" in capsys.readouterr().out
    run_dir = copy_run(finished_run, tmp_path / "run")
    assert main(NPG, ["--resume", str(run_dir), "--total-steps", "512"]) == 2
    assert f"python -m agents.trpo --resume {run_dir}" in one_error_line(capsys.readouterr().err)


def test_npg_has_no_line_search_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for flag in ("--line-search", "--no-line-search", "--backtrack-iters", "--backtrack-ratio"):
        argv = [flag] if "line-search" in flag else [flag, "3"]
        assert main(NPG, argv) == 2
        assert "unrecognized arguments" in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- --help
def test_help_documents_every_flag_with_its_default_and_choices(capsys):
    assert main(TRPO, ["--help"]) == 0
    text = capsys.readouterr().out
    parser = cli.build_parser(TRPO)
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help and "default" in action.help, action.option_strings
        assert action.help.count("(default") == 1, action.option_strings  # never doubled
    assert "(default: None)" not in text and "default: None" not in text
    assert text.startswith("usage: python -m agents.trpo [options]\n")
    for choice in ("gauss-newton", "kl-hessian", "analytic", "sample", "tanh", "relu", "float32", "float64", "async"):
        assert choice in text
    total_steps = next(action.help for action in parser._actions if action.dest == "total_steps")
    assert "100,000 for CartPole, Pendulum" in total_steps and "1,000,000 otherwise" in total_steps
    n_steps = next(action.help for action in parser._actions if action.dest == "n_steps")
    assert "default: per environment: 128 for CartPole; 1024 otherwise" in n_steps


def test_npg_help_shows_only_what_applies_to_npg(tmp_path):
    result = run_cli("--help", cwd=tmp_path, module="agents.npg")
    assert result.returncode == 0
    assert "usage: python -m agents.npg [options]" in result.stdout
    for absent in ("--line-search", "--backtrack-iters", "--backtrack-ratio"):
        assert absent not in result.stdout
    assert "--max-kl" in result.stdout and "--cg-iters" in result.stdout


# ---------------------------------------------------------------------------------------- training failures
class NaNRewardAfter(gym.Env):
    """Finite data for ``good_steps`` steps per sub-environment, then a NaN reward."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, good_steps: int = 150) -> None:
        self.good_steps, self.steps = good_steps, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.steps += 1
        reward = float("nan") if self.steps > self.good_steps else 1.0
        return np.zeros(2, np.float32), reward, False, self.steps % 20 == 0, {}


gym.register("tests/NaNRewardAfter-v0", entry_point=NaNRewardAfter)


def test_a_failure_during_training_is_one_line_and_keeps_the_last_iteration(tmp_path, capsys):
    """A NaN reward in the third iteration: exit 1, one line naming the problem and the resume
    command, no traceback; the checkpoint holds the two completed iterations."""
    run_dir = tmp_path / "run"
    argv = ["--env", "tests/NaNRewardAfter-v0", "--run-dir", str(run_dir), "--checkpoint-interval", "100", *TINY]
    assert main(TRPO, argv) == 1
    err = capsys.readouterr().err
    line = one_error_line("\n".join(line for line in err.splitlines() if not line.startswith("run directory:")))
    assert "NonFiniteDataError" in line and f"python -m agents.trpo --resume {run_dir}" in line
    saved = TRPO.load(run_dir)
    assert saved.global_step == 2 * 128
    saved.close()
