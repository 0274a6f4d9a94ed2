"""Edge cases of users' environments: images with normalize_obs, terminal states without legal actions,
MultiDiscrete masks that forbid a whole entry, wrappers kept on load, factories from a script."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from agents import TRPO
from agents.common.env_sources import resolve_env

TINY = {"n_steps": 16, "num_envs": 2, "hidden_sizes": (8,)}


class EndsWithNoLegalAction(gym.Env):
    """A board game in miniature: its terminal state allows no action, as a full board does."""

    observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, forbid_entry: bool = False) -> None:
        self.forbid_entry = forbid_entry
        if forbid_entry:
            self.action_space = spaces.MultiDiscrete([2, 3])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {"action_mask": self._mask(done=False)}

    def step(self, action):
        self.t += 1
        done = self.t == 3
        return np.full(2, self.t / 3, np.float32), 1.0, done, False, {"action_mask": self._mask(done)}

    def _mask(self, done: bool) -> np.ndarray:
        if self.forbid_entry:  # entry 1 (3 categories) has none allowed at step 2
            return np.array([1, 1, 0, 0, 0] if self.t == 2 else [1, 1, 1, 1, 1], dtype=np.int8)
        return np.zeros(2, np.int8) if done else np.ones(2, np.int8)


def test_image_observations_are_never_normalised():
    agent = TRPO("tests/Image-v0", seed=0, normalize_obs=True, **TINY)
    assert agent.layout.image and agent.env_stack.obs_normalizer is None
    rollout = agent.collector.collect(agent.actor, agent.rollout_networks())
    assert rollout.obs.dtype == agent.env_stack.envs.single_observation_space.dtype  # raw pixels stored
    agent.close()


def test_a_terminal_state_without_legal_actions_trains_and_evaluates():
    agent = TRPO(EndsWithNoLegalAction, seed=0, **TINY)
    agent.learn(64)
    assert agent.evaluate(2)["lengths"] == [3, 3]
    agent.close()


def test_a_multidiscrete_mask_that_forbids_a_whole_entry_is_named():
    agent = TRPO(lambda: EndsWithNoLegalAction(forbid_entry=True), seed=0, **TINY)
    with pytest.raises(ValueError, match=r"allows no action for action entry 1 at vector step 2") as error:
        agent.learn(64)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="action_masks allow no action"):
        agent.act(np.zeros(2, np.float32), action_masks=np.array([1, 1, 0, 0, 0], bool))
    agent.close()


def test_load_with_the_env_given_again_keeps_the_runs_importable_wrappers(tmp_path):
    agent = TRPO(lambda: gym.make("tests/ScriptedChain-v0"), wrappers=["tiny_envs:scale_reward_by_ten"], **TINY)
    agent.learn(32)
    agent.save(tmp_path / "run.pt")
    agent.close()
    loaded = TRPO.load(tmp_path / "run.pt", env=lambda: gym.make("tests/ScriptedChain-v0"))
    assert loaded.config.wrappers == ("tiny_envs:scale_reward_by_ten",) and len(loaded.env_source.wrappers) == 1
    loaded.learn(32)
    loaded.close()


def test_a_factory_defined_in_a_script_is_not_taken_for_an_importable_one():
    def make() -> gym.Env:
        return gym.make("CartPole-v1")

    make.__module__, make.__qualname__ = "__main__", "make"
    source = resolve_env(make)
    assert source.kind == "factory" and not source.importable


def test_evaluation_elsewhere_refuses_a_vector_env_and_other_observations_in_one_line():
    agent = TRPO("CartPole-v1", seed=0, **TINY)
    vector = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")])
    with pytest.raises(ValueError, match=r"^env: evaluate takes an id") as vector_error:
        agent.evaluate(2, env=vector)
    with pytest.raises(ValueError, match=r"^env: its observations reach the networks with shape \(3,\)") as error:
        agent.evaluate(2, env="Pendulum-v1")
    assert "\n" not in str(vector_error.value) + str(error.value)
    vector.close()
    agent.close()


def test_action_masks_for_box_actions_are_refused_in_one_line():
    agent = TRPO("Pendulum-v1", seed=0, **TINY)
    with pytest.raises(ValueError, match=r"^action_masks apply to Discrete and MultiDiscrete actions") as error:
        agent.act(np.zeros(3, np.float32), action_masks=np.ones(1, bool))
    assert "\n" not in str(error.value)
    agent.close()
