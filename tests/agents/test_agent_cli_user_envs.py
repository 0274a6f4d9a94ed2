"""The command line with a user's environment (``--env module:factory``), wrappers (``--wrapper``),
``--device`` and ``--record-video``."""

from __future__ import annotations

import importlib.util
import json

import gymnasium as gym
import pytest

from agents import TRPO
from agents.common.cli import main

TINY = ["--n-steps", "64", "--num-envs", "2", "--hidden-sizes", "8", "--eval-episodes", "2", "--no-progress"]
BUILT = []
"""Environments :func:`make_chain` has built, in this process."""


def make_chain() -> gym.Env:
    """A factory the command line imports by name: the scripted chain of ``tiny_envs``, counted."""
    BUILT.append(True)
    return gym.make("tests/ScriptedChain-v0")


class DoubleReward(gym.RewardWrapper):
    """Doubles every reward: its effect shows in the logged returns."""

    def reward(self, reward: float) -> float:
        return 2.0 * reward


def test_env_factory_and_wrapper_by_name_train_resume_and_evaluate(tmp_path, capsys):
    factory, wrapper = f"{__name__}:make_chain", f"{__name__}:DoubleReward"
    run_dir = tmp_path / "run"
    BUILT.clear()
    argv = ["--env", factory, "--wrapper", wrapper, "--total-steps", "128", "--run-dir", str(run_dir), *TINY]
    assert main(TRPO, argv) == 0
    assert len(BUILT) >= 2  # two training sub-environments, then the evaluation's
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["env"] == factory and config["wrappers"] == [wrapper] and config["custom"] == []
    assert main(TRPO, ["--resume", str(run_dir), "--total-steps", "256", "--no-progress"]) == 0
    agent = TRPO.load(run_dir)  # rebuilt from the names alone
    assert agent.global_step == 256
    # the chain's episodes return 1 + 2 = 3 and 1 + 2 + 3 + 4 = 10 in turn: logs and evaluation report
    # the environment's own returns, below the wrapper, which doubles what training optimises
    assert {row["mean_return"] for row in agent.history} == {6.5}
    assert agent.evaluate(2)["returns"] == [3.0, 3.0]
    wrapped = agent.env_source.sub_env({})
    wrapped.reset(seed=0)
    assert wrapped.step(0)[1] == 2.0
    agent.close()
    assert "final evaluation: env=" + factory in capsys.readouterr().out


def test_unknown_wrapper_and_bad_device_are_one_line_usage_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(TRPO, ["--wrapper", "no_such_module:wrap", "--total-steps", "64", *TINY]) == 2
    assert "wrappers" in capsys.readouterr().err
    assert main(TRPO, ["--device", "bogus", "--total-steps", "64", *TINY]) == 2
    assert "device" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(importlib.util.find_spec("moviepy") is None, reason="RecordVideo needs moviepy")
def test_record_video_writes_one_video_per_evaluation_episode_and_never_overwrites(tmp_path, capsys):
    videos, run_dir = tmp_path / "videos", tmp_path / "run"
    argv = ["--total-steps", "128", "--run-dir", str(run_dir), "--record-video", str(videos), *TINY]
    assert main(TRPO, argv) == 0
    assert sorted(path.name for path in videos.glob("*.mp4")) == ["episode-0-episode-0.mp4", "episode-1-episode-0.mp4"]
    capsys.readouterr()
    assert main(TRPO, ["--eval", str(run_dir), "--record-video", str(videos)]) == 2
    assert "never overwritten" in capsys.readouterr().err
