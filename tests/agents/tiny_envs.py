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


class ObservationRecorder(gym.Wrapper):
    """Keeps every raw observation the environment returns (reset and step), in order."""

    def __init__(self, env: gym.Env, seen: list) -> None:
        super().__init__(env)
        self.seen = seen

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.seen.append(obs)
        return obs, info

    def step(self, action):
        result = self.env.step(action)
        self.seen.append(result[0])
        return result


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
    gym.register("tests/MixedObservation-v0", entry_point=MixedObservationEnv)
    gym.register("tests/DiscreteObservation-v0", entry_point=DiscreteObservationEnv)
    for action in MASK_ACTIONS:
        for provide in ("info", "method"):
            kwargs = {"action": action, "provide": provide}
            gym.register(f"tests/Masked-{action}-{provide}-v0", entry_point=MaskedEnv, kwargs=kwargs)
    gym.register("tests/Image-v0", entry_point=ImageEnv)
    gym.register("tests/ImageDict-v0", entry_point=ImageDictEnv)


def make_scripted_chain() -> gym.Env:
    """A :class:`ScriptedChain` (Discrete actions) under a 4-step time limit: a factory importable by name."""
    return gym.wrappers.TimeLimit(ScriptedChain(), max_episode_steps=4)


def make_random_discrete() -> gym.Env:
    """A :class:`RandomRewardEnv` with ``Discrete(3)`` actions: a factory importable by name."""
    return RandomRewardEnv("discrete")


def scale_reward_by_ten(env: gym.Env) -> gym.Env:
    """A wrapper importable by name: every reward multiplied by 10."""
    return gym.wrappers.TransformReward(env, lambda reward: 10.0 * reward)


class MixedObservationEnv(gym.Env):
    """A ``Dict`` (or ``Tuple``) observation of a ``Box``, a ``Discrete`` and a ``MultiDiscrete`` entry.

    The ``Box`` entry is uniform in ``[2, 4]`` (its mean is far from 0, so normalisation shows); the
    reward is 1 when the action equals the ``Discrete`` entry. Episodes last 10 steps.
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, container: str = "dict") -> None:
        parts = {
            "box": spaces.Box(2.0, 4.0, (2,), np.float32),
            "discrete": spaces.Discrete(3),
            "multi": spaces.MultiDiscrete([2, 3]),
        }
        self.observation_space = spaces.Dict(parts) if container == "dict" else spaces.Tuple(tuple(parts.values()))
        self.action_space = spaces.Discrete(3)
        self.container = container
        self.t = 0
        self.last: dict = {}

    def _obs(self):
        self.last = {
            "box": self.np_random.uniform(2.0, 4.0, 2).astype(np.float32),
            "discrete": int(self.np_random.integers(3)),
            "multi": self.np_random.integers(0, [2, 3]).astype(np.int64),
        }
        return dict(self.last) if self.container == "dict" else tuple(self.last.values())

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.last["discrete"])
        self.t += 1
        return self._obs(), reward, self.t >= 10, False, {}


class DiscreteObservationEnv(gym.Env):
    """``Discrete(5)`` observations (a random state); reward 1 when the action is the state modulo 2."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = spaces.Discrete(5)
        self.action_space = spaces.Discrete(2)
        self.state = 0
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.state = int(self.np_random.integers(5))
        return self.state, {}

    def step(self, action):
        reward = float(int(action) == self.state % 2)
        self.t += 1
        self.state = int(self.np_random.integers(5))
        return self.state, reward, self.t >= 8, False, {}


class FixedSpaceEnv(gym.Env):
    """An environment with a given observation space, sampled at every step (for spaces the agents refuse)."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, observation_space: gym.Space) -> None:
        self.observation_space = observation_space
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


MASK_ACTIONS = {"discrete": spaces.Discrete(4), "multidiscrete": spaces.MultiDiscrete([3, 2])}


class MaskedEnv(gym.Env):
    """Random action masks (at least one action allowed, per ``MultiDiscrete`` entry too), seeded.

    The observation is the mask of allowed actions as ``0.0`` / ``1.0`` followed by a random entry,
    so a rollout can check that its stored mask at step ``t`` is the one of its observation at ``t``.
    ``provide`` is ``"info"`` (``info["action_mask"]``) or ``"method"`` (an ``action_masks()`` method);
    ``mask_size_error`` adds that many entries to the info's mask (a wrong size). Taking a masked
    action raises ``AssertionError``. The reward is 1 for the first allowed action.
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, action: str = "discrete", provide: str = "info", mask_size_error: int = 0) -> None:
        self.action_space = MASK_ACTIONS[action]
        self.sizes = [int(self.action_space.n)] if action == "discrete" else [int(n) for n in self.action_space.nvec]
        dim = sum(self.sizes)
        self.observation_space = spaces.Box(-1.0, 1.0, (dim + 1,), np.float32)
        self.provide, self.mask_size_error = provide, mask_size_error
        self.mask = np.ones(dim, dtype=bool)
        self.t = 0

    def _draw(self):
        blocks = []
        for size in self.sizes:
            block = self.np_random.random(size) < 0.5
            block[self.np_random.integers(size)] = True
            blocks.append(block)
        self.mask = np.concatenate(blocks)
        obs = np.append(self.mask.astype(np.float32), np.float32(self.np_random.uniform(-1, 1)))
        info = {} if self.provide != "info" else {"action_mask": np.append(self.mask, [True] * self.mask_size_error)}
        return obs, info

    def action_masks(self) -> np.ndarray:
        """The allowed actions of the current state (sb3-contrib's convention)."""
        return self.mask.copy()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._draw()

    def step(self, action):
        offsets = np.cumsum([0, *self.sizes[:-1]])
        actions = np.atleast_1d(np.asarray(action))
        assert self.mask[actions + offsets].all(), f"masked action {action} taken under mask {self.mask}"
        first_allowed = [int(np.argmax(block)) for block in np.split(self.mask, offsets[1:])]
        reward = float(actions.tolist() == first_allowed)
        self.t += 1
        obs, info = self._draw()
        return obs, reward, self.t >= 6, False, info


class ImageEnv(gym.Env):
    """Random images of a given shape and dtype (``uint8`` pixels or ``bool`` cells); 8-step episodes.

    The reward is 1 when the action says whether the first pixel is bright (``> 127``, or set for
    ``bool``), so there is something to learn from the pixels.
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, shape=(10, 10, 3), dtype: str = "uint8") -> None:
        high = 1 if dtype == "bool" else 255
        self.observation_space = spaces.Box(0, high, tuple(shape), np.dtype(dtype))
        self.action_space = spaces.Discrete(2)
        self.image = np.zeros(shape, dtype=dtype)
        self.t = 0

    def _obs(self) -> np.ndarray:
        if self.observation_space.dtype == np.bool_:
            self.image = self.np_random.random(self.observation_space.shape) < 0.5
        else:
            self.image = self.np_random.integers(0, 256, self.observation_space.shape, dtype=np.uint8)
        return self.image.copy()

    def bright(self) -> int:
        return int(self.image.reshape(-1)[0] > 127) if self.image.dtype == np.uint8 else int(self.image.reshape(-1)[0])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.bright())
        self.t += 1
        return self._obs(), reward, self.t >= 8, False, {}


class ImageDictEnv(ImageEnv):
    """A ``Dict`` of a 10×10×3 ``uint8`` image and a ``Box(3)`` vector; the reward as :class:`ImageEnv`'s."""

    def __init__(self) -> None:
        super().__init__((10, 10, 3), "uint8")
        self.image_space = self.observation_space
        self.observation_space = spaces.Dict(
            {"image": self.image_space, "vector": spaces.Box(-1.0, 1.0, (3,), np.float32)}
        )

    def _obs(self):
        self.image = self.np_random.integers(0, 256, self.image_space.shape, dtype=np.uint8)
        return {"image": self.image.copy(), "vector": self.np_random.uniform(-1, 1, 3).astype(np.float32)}
