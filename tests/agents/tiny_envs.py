"""Tiny hand-built environments with scripted rewards and episode ends, for exact checks."""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

ACTION_SPACES = {
    "box": spaces.Box(-1.0, 1.0, (2,), np.float32),
    "discrete": spaces.Discrete(3),
    "multidiscrete": spaces.MultiDiscrete([3, 2]),
    "multibinary": spaces.MultiBinary(3),
}


class ScriptedChain(gym.Env):
    """Observation ``[t, episode]``; reward ``r = t + 1`` at step ``t`` of an episode.

    Episode ``k`` (counting from 0 after each seeded reset) terminates after ``lengths[k % 2]``
    steps when ``terminal[k % 2]`` is true; otherwise a ``TimeLimit`` of ``max_episode_steps``
    truncates it. The action is ignored, so every quantity is known in advance.
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, action: str = "discrete", lengths=(2, 5), terminal=(True, False)) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = ACTION_SPACES[action]
        self.lengths = lengths
        self.terminal = terminal
        self.episode = -1
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.episode = -1
        self.episode += 1
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        reward = float(self.t + 1)
        self.t += 1
        kind = self.episode % 2
        terminated = self.terminal[kind] and self.t >= self.lengths[kind]
        return self._obs(), reward, terminated, False, {}

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.episode], dtype=np.float32)


class RandomRewardEnv(gym.Env):
    """Random observations; reward depends on the action, so policies have something to learn."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, action: str = "discrete") -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = ACTION_SPACES[action]
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        obs = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        reward = float(np.sum(np.asarray(action, dtype=np.float64))) + float(self.np_random.normal())
        return obs, reward, self.t >= 20, False, {}


class DictObservationEnv(gym.Env):
    """A Dict observation that never changes; every episode ends after one step."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = spaces.Dict({"a": spaces.Box(-1.0, 1.0, (2,), np.float32)})
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return {"a": np.zeros(2, np.float32)}, {}

    def step(self, action):
        return {"a": np.zeros(2, np.float32)}, 0.0, True, False, {}


class TupleActionEnv(DictObservationEnv):
    """An environment the agents must refuse (Tuple actions)."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3)))

    def reset(self, *, seed=None, options=None):
        gym.Env.reset(self, seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, True, False, {}


class TextObservationEnv(DictObservationEnv):
    """An environment the agents must refuse (Text observations)."""

    def __init__(self) -> None:
        self.observation_space = spaces.Text(4)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        gym.Env.reset(self, seed=seed)
        return "abc", {}

    def step(self, action):
        return "abc", 0.0, True, False, {}


def register_all() -> None:
    """Register the ids used by the tests (idempotent)."""
    if "tests/ScriptedChain-v0" in gym.registry:
        return
    gym.register("tests/ScriptedChain-v0", entry_point=ScriptedChain, max_episode_steps=4)
    for action in ACTION_SPACES:
        gym.register(f"tests/Random-{action}-v0", entry_point=RandomRewardEnv, kwargs={"action": action})
    gym.register("tests/DictObservation-v0", entry_point=DictObservationEnv)
    gym.register("tests/TupleAction-v0", entry_point=TupleActionEnv)
    gym.register("tests/TextObservation-v0", entry_point=TextObservationEnv)
