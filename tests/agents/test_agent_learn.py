"""``TRPO.learn``: steps counted like Stable-Baselines3 (``reset_num_timesteps``), the stop callback,
an iteration abandoned by an exception, run directories never overwritten, the progress bar, and
the one-line errors of the Python API (the same text as the command line's)."""

from __future__ import annotations

import pytest
import torch
from test_agent_trpo import assert_states_equal, full_state

from agents import NPG, TRPO
from agents.common.logs import read_csv

SMALL = {"n_steps": 64, "num_envs": 2, "hidden_sizes": (16, 16)}  # 128 steps per iteration
BATCH = 2 * 64


def test_learn_counts_steps_from_the_current_step_by_default():
    agent = TRPO("CartPole-v1", seed=0, **SMALL)
    agent.learn(2 * BATCH)
    agent.learn(2 * BATCH)  # SB3's default: a second call trains as many steps again
    assert agent.global_step == 4 * BATCH and agent.iteration == 4
    straight = TRPO("CartPole-v1", seed=0, **SMALL).learn(4 * BATCH)
    assert_states_equal(full_state(agent), full_state(straight))  # two calls continue bit for bit
    agent.learn(3 * BATCH, reset_num_timesteps=False)  # a cumulative target already reached: nothing
    assert agent.global_step == 4 * BATCH
    agent.learn(5 * BATCH, reset_num_timesteps=False)
    assert agent.global_step == 5 * BATCH
    agent.learn(0)
    assert agent.global_step == 5 * BATCH
    agent.learn(1)  # whole iterations
    assert agent.global_step == 6 * BATCH
    with pytest.raises(ValueError, match="reset_num_timesteps"):
        agent.learn(BATCH, reset_num_timesteps=None)
    agent.close()
    straight.close()


def test_a_loaded_agent_trains_the_steps_asked_for(tmp_path):
    agent = TRPO("CartPole-v1", seed=1, **SMALL).learn(BATCH)
    agent.save(tmp_path / "checkpoint.pt")
    loaded = TRPO.load(tmp_path / "checkpoint.pt").learn(2 * BATCH)
    assert loaded.global_step == 3 * BATCH
    target = TRPO.load(tmp_path / "checkpoint.pt").learn(2 * BATCH, reset_num_timesteps=False)
    assert target.global_step == 2 * BATCH
    for each in (agent, loaded, target):
        each.close()


def test_callback_is_called_after_every_iteration_and_false_stops(tmp_path):
    seen = []

    def callback(agent):
        seen.append(agent.global_step)
        return None if agent.iteration < 3 else False  # None continues, False stops

    agent = TRPO("CartPole-v1", seed=0, checkpoint_interval=100, **SMALL)
    agent.learn(10 * BATCH, run_dir=tmp_path, callback=callback)
    assert seen == [BATCH, 2 * BATCH, 3 * BATCH] and agent.global_step == 3 * BATCH
    loaded = TRPO.load(tmp_path)  # the checkpoint is written where training stopped
    assert loaded.global_step == 3 * BATCH
    assert [int(row["global_step"]) for row in read_csv(tmp_path / "progress.csv")] == seen
    agent.close()
    loaded.close()


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_exception_mid_iteration_saves_the_last_completed_iteration(error, tmp_path, monkeypatch):
    """The third iteration raises inside the critic update: the checkpoint holds the state after
    the second (none was due: checkpoint_interval=100), and resuming from it is bit-identical."""
    options = {"checkpoint_interval": 100, **SMALL}
    agent = TRPO("Pendulum-v1", seed=3, normalize_obs=True, normalize_reward=True, **options)
    calls = {"count": 0}
    update_value = agent.update_value

    def failing_update_value(batch):
        calls["count"] += 1
        if calls["count"] == 3:
            raise error("stop")
        return update_value(batch)

    monkeypatch.setattr(agent, "update_value", failing_update_value)
    with pytest.raises(error):
        agent.learn(5 * BATCH, run_dir=tmp_path)
    agent.close()
    resumed = TRPO.load(tmp_path)
    assert resumed.global_step == 2 * BATCH
    assert [int(row["global_step"]) for row in read_csv(tmp_path / "progress.csv")] == [BATCH, 2 * BATCH]
    resumed.learn(4 * BATCH, reset_num_timesteps=False, run_dir=tmp_path)
    straight = TRPO("Pendulum-v1", seed=3, normalize_obs=True, normalize_reward=True, **options).learn(4 * BATCH)
    assert_states_equal(full_state(resumed), full_state(straight))  # the logged metrics included
    resumed.close()
    straight.close()


def test_a_run_directory_of_another_run_is_never_overwritten(tmp_path):
    first = TRPO("CartPole-v1", seed=0, **SMALL).learn(BATCH, run_dir=tmp_path)
    first.learn(BATCH, run_dir=tmp_path)  # the same agent continues its own run
    assert [int(row["global_step"]) for row in read_csv(tmp_path / "progress.csv")] == [BATCH, 2 * BATCH]
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    other = TRPO("Pendulum-v1", seed=1, **SMALL)
    with pytest.raises(ValueError, match="already holds a run") as raised:
        other.learn(BATCH, run_dir=tmp_path)
    assert "TRPO.load" in str(raised.value) and "\n" not in str(raised.value)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before
    loaded = TRPO.load(tmp_path)  # loaded from the directory: its run, continued
    loaded.learn(BATCH, run_dir=tmp_path)
    assert [int(row["global_step"]) for row in read_csv(tmp_path / "progress.csv")] == [BATCH, 2 * BATCH, 3 * BATCH]
    for each in (first, other, loaded):
        each.close()


def test_a_target_already_reached_rewrites_nothing(tmp_path):
    agent = TRPO("CartPole-v1", seed=0, **SMALL).learn(2 * BATCH, run_dir=tmp_path)
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in tmp_path.rglob("*") if path.is_file()}
    agent.learn(BATCH, reset_num_timesteps=False, run_dir=tmp_path)
    agent.learn(0, run_dir=tmp_path)
    after = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in tmp_path.rglob("*") if path.is_file()}
    assert after == before
    agent.close()


def test_progress_bar_counts_the_steps_that_run_and_ends_once(capsys):
    agent = TRPO("CartPole-v1", seed=0, **SMALL)
    agent.learn(300, progress=True)  # three iterations of 128: 384 steps
    agent.learn(BATCH, progress=True)
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    split = next(index for index, line in enumerate(lines) if "/512" in line)
    first, second = lines[:split], lines[split:]
    assert "/300" not in err and "384/384" in first[-1] and "384/512" in second[0]
    assert sum("100%" in line for line in first) == 1  # the final line once, not twice
    assert sum("512/512" in line for line in second) == 1
    agent.close()


def test_npg_refuses_a_line_search():
    with pytest.raises(ValueError, match="use TRPO"):
        NPG("CartPole-v1", line_search=True)
    agent = NPG("CartPole-v1", line_search=False, **SMALL)  # what it is anyway
    assert agent.algorithm == "npg" and agent.config.line_search is False
    agent.close()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"env": "CartPol-v1"}, "did you mean 'CartPole-v1'"),
        ({"env": "CartPole-v9"}, "'CartPole-v1'"),
        ({"env": "Xyzzy-v0"}, "gymnasium.pprint_registry()"),
        ({"env": "NoSuchNamespace/Env-v0"}, "namespace 'NoSuchNamespace'"),
        ({"env": "CartPole-v1", "env_kwargs": {"gravityy": 9.8}}, "gravityy"),
    ],
)
def test_environments_that_cannot_be_built_raise_one_line_value_errors(kwargs, expected):
    with pytest.raises(ValueError) as raised:
        TRPO(**kwargs)
    message = str(raised.value)
    assert expected in message and "\n" not in message
    assert torch.get_num_threads() >= 1  # nothing else went wrong on the way
