"""Non-finite data from an environment never reaches a network or a statistic (docs/agents.md, "Data integrity").

A NaN or infinite observation or reward stops training at the vector step that returned it, with
a one-line :class:`NonFiniteDataError` naming the environment id, the sub-environment and the
step; the parameters, the critic, its optimizer and the normalisation statistics stay finite, and
the statistics never see the bad step. Each case draws its step, sub-environment and observation
entry from a seeded generator.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents import TRPO
from agents.common.envs import NonFiniteDataError, all_finite, make_env_stack
from agents.trpo.agent import EVAL_SEED_OFFSET

ENV_ID = "tests/Poisoned-v0"
SEED = 5
NUM_ENVS, N_STEPS = 3, 8
BATCH = NUM_ENVS * N_STEPS
SMALL = {"num_envs": NUM_ENVS, "n_steps": N_STEPS, "hidden_sizes": (8,), "value_epochs": 2, "value_minibatch_size": 8}


class Poisoned(gym.Env):
    """Gaussian observations and rewards; no episode end, so vector step ``k`` is each sub-environment's step ``k``.

    The sub-environment seeded ``SEED + target`` puts ``value`` into its reward, or into entry
    ``index`` of its observation, at its step ``at`` (0: the observation of its first reset).
    ``obs_scale`` and ``reward_scale`` multiply the observations and rewards (huge finite values);
    ``limit`` ends episodes after that many steps.
    """

    metadata = {"render_modes": []}  # noqa: RUF012 - gymnasium's class attribute

    def __init__(
        self,
        where="reward",
        value="nan",
        at=1,
        target=0,
        index=0,
        obs_scale=1.0,
        reward_scale=1.0,
        obs_dtype="float32",
        limit=None,
    ):
        self.observation_space = spaces.Box(-np.inf, np.inf, (3,), np.dtype(obs_dtype))
        self.action_space = spaces.Discrete(2)
        self.where, self.value, self.at, self.target, self.index = where, float(value), at, target, index
        self.obs_scale, self.reward_scale, self.dtype = obs_scale, reward_scale, np.dtype(obs_dtype)
        self.poisoned, self.t, self.limit = False, 0, limit

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.poisoned = seed == SEED + self.target
        self.t = 0
        return self._poison_obs(self._obs()), {}

    def step(self, action):
        self.t += 1
        obs, reward = self._obs(), self.reward_scale * float(self.np_random.normal())
        if self.where == "reward" and self._now():
            reward = self.value
        ended = self.limit is not None and self.t >= self.limit
        return self._poison_obs(obs), reward, ended, False, {}

    def _obs(self):
        return (self.obs_scale * self.np_random.normal(size=3)).astype(self.dtype)

    def _now(self):
        return self.poisoned and self.t == self.at

    def _poison_obs(self, obs):
        if self.where == "obs" and self._now():
            obs[self.index] = self.value
        return obs


gym.register(ENV_ID, entry_point=Poisoned)


def finite_everywhere(agent):
    """Every parameter, the critic's Adam state, the normalisation statistics and the carried observation."""
    tensors = [*agent.actor.parameters(), *agent.critic.parameters()]
    for state in agent.value_optimizer.state.values():
        tensors += [value for value in state.values() if torch.is_tensor(value)]
    assert all(torch.isfinite(tensor).all() for tensor in tensors)
    stack = agent.env_stack
    if stack.obs_normalizer is not None:
        rms = stack.obs_normalizer.obs_rms
        assert np.isfinite(rms.mean).all() and np.isfinite(rms.var).all() and math.isfinite(rms.count)
    if stack.reward_normalizer is not None:
        rms = stack.reward_normalizer.return_rms
        assert np.isfinite(rms.mean).all() and np.isfinite(rms.var).all() and math.isfinite(rms.count)
        assert np.isfinite(stack.reward_normalizer.accumulated_reward).all()
    assert np.isfinite(agent.collector.obs).all()


CASES = [
    (where, value, normalize)
    for where in ("reward", "obs")
    for value in ("nan", "inf", "-inf")
    for normalize in (False, True)
]


@pytest.mark.parametrize(("case", "where", "value", "normalize"), [(i, *case) for i, case in enumerate(CASES)])
def test_a_nonfinite_observation_or_reward_stops_training_at_its_step(case, where, value, normalize):
    rng = np.random.default_rng(1000 + case)
    at, target, index = int(rng.integers(1, 3 * N_STEPS + 1)), int(rng.integers(NUM_ENVS)), int(rng.integers(3))
    env_kwargs = {"where": where, "value": value, "at": at, "target": target, "index": index}
    agent = TRPO(ENV_ID, seed=SEED, env_kwargs=env_kwargs, normalize_obs=normalize, normalize_reward=normalize, **SMALL)
    with pytest.raises(NonFiniteDataError) as error:
        agent.learn(4 * BATCH)
    message = str(error.value)
    assert "\n" not in message
    assert f"{ENV_ID} sub-environment {target} returned a non-finite " in message
    assert f"at vector step {at} (global step {at * NUM_ENVS})" in message
    shown = {"nan": "nan", "inf": "inf", "-inf": "-inf"}[value]
    assert (f"reward {shown}" if where == "reward" else f"observation entry {index} = {shown}") in message
    assert agent.global_step == (at - 1) // N_STEPS * BATCH  # the iterations before the bad one, and no more
    finite_everywhere(agent)
    if normalize:  # the statistics saw the reset and the steps before the bad one, not the bad one
        assert agent.env_stack.obs_normalizer.obs_rms.count == pytest.approx(1e-4 + NUM_ENVS * at)
        assert agent.env_stack.reward_normalizer.return_rms.count == pytest.approx(1e-4 + NUM_ENVS * (at - 1))
    with pytest.raises(NonFiniteDataError, match="sub-environment"):  # the stack refuses to go on from there
        agent.learn(4 * BATCH)
    finite_everywhere(agent)
    agent.close()


@pytest.mark.filterwarnings("ignore:.*not within the observation space:UserWarning")  # gymnasium's env checker
def test_a_nonfinite_first_observation_is_refused_when_the_agent_is_built():
    env_kwargs = {"where": "obs", "value": "nan", "at": 0, "target": 2, "index": 1}
    with pytest.raises(NonFiniteDataError) as error:
        TRPO(ENV_ID, seed=SEED, env_kwargs=env_kwargs, normalize_obs=True, **SMALL)
    message = str(error.value)
    assert f"{ENV_ID} sub-environment 2 returned a non-finite observation entry 1 = nan at reset" in message
    assert "\n" not in message


def test_the_check_sits_below_the_normalisation_in_async_mode_too():
    env_kwargs = {"where": "obs", "value": "inf", "at": 11, "target": 1, "index": 2}
    agent = TRPO(ENV_ID, seed=SEED, env_kwargs=env_kwargs, vectorization_mode="async", normalize_obs=True, **SMALL)
    try:
        with pytest.raises(NonFiniteDataError, match=rf"{ENV_ID} sub-environment 1 .* at vector step 11 "):
            agent.learn(4 * BATCH)
        finite_everywhere(agent)
        assert agent.env_stack.obs_normalizer.obs_rms.count == pytest.approx(1e-4 + NUM_ENVS * 11)
    finally:
        agent.close()


@pytest.mark.parametrize("interval", [1, 5])  # 5: the last iteration's state is written when the error stops learn
def test_training_resumes_from_the_last_checkpoint_before_the_bad_step(interval, tmp_path):
    env_kwargs = {"where": "reward", "value": "nan", "at": 2 * N_STEPS + 3, "target": 0}
    options = {"normalize_reward": True, "checkpoint_interval": interval}
    agent = TRPO(ENV_ID, seed=SEED, env_kwargs=env_kwargs, **options, **SMALL)
    with pytest.raises(NonFiniteDataError, match=f"at vector step {2 * N_STEPS + 3} "):
        agent.learn(4 * BATCH, run_dir=tmp_path)
    agent.close()
    loaded = TRPO.load(tmp_path)  # the checkpoint of the last whole iteration: finite, and the step count is the run's
    assert loaded.global_step == 2 * BATCH and loaded.env_stack.vector_steps == 2 * N_STEPS
    finite_everywhere(loaded)
    with pytest.raises(NonFiniteDataError, match=f"at vector step {2 * N_STEPS + 3} "):  # the same step again
        loaded.learn(4 * BATCH)
    loaded.close()


def test_evaluation_refuses_nonfinite_data_too():
    target = EVAL_SEED_OFFSET + 1  # evaluation's sub-environment 1 (training's are not poisoned)
    env_kwargs = {"where": "reward", "value": "inf", "at": 4, "target": target, "limit": 10}
    agent = TRPO(ENV_ID, seed=SEED, env_kwargs=env_kwargs, **SMALL)
    agent.learn(BATCH)
    with pytest.raises(NonFiniteDataError, match=rf"{ENV_ID} sub-environment 1 returned a non-finite reward inf at "):
        agent.evaluate(2)  # without the check: an infinite mean return
    agent.close()


# ---------------------------------------------------------------- finite values that overflow


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_observations_beyond_float32_are_refused_before_any_update():
    env_kwargs = {"where": "none", "obs_scale": 1e39, "obs_dtype": "float64"}  # finite in float64, inf in float32
    agent = TRPO(ENV_ID, seed=SEED, env_kwargs=env_kwargs, **SMALL)
    networks = [p.detach().clone() for p in [*agent.actor.parameters(), *agent.critic.parameters()]]
    with pytest.raises(NonFiniteDataError, match=rf"{ENV_ID} sub-environment 0 returned an observation beyond float32"):
        agent.learn(BATCH)
    after = [*agent.actor.parameters(), *agent.critic.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(networks, after, strict=True)) and agent.global_step == 0
    agent.close()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_rewards_that_overflow_the_statistics_leave_them_as_they_were():
    env_kwargs = {"where": "none", "reward_scale": 1e300}
    agent = TRPO(ENV_ID, seed=SEED, env_kwargs=env_kwargs, dtype="float64", normalize_reward=True, **SMALL)
    before = agent.env_stack.statistics()
    with pytest.raises(NonFiniteDataError, match=r"reward normalisation statistics of tests/Poisoned-v0 overflowed"):
        agent.learn(BATCH)
    after = agent.env_stack.statistics()["reward_normalizer"]
    np.testing.assert_array_equal(after["return_rms"]["var"], before["reward_normalizer"]["return_rms"]["var"])
    finite_everywhere(agent)
    agent.close()


def test_returns_beyond_float32_are_refused_before_any_update():
    env_kwargs = {"where": "none", "reward_scale": 1e39}  # finite float64 rewards, returns beyond float32
    agent = TRPO(ENV_ID, seed=SEED, env_kwargs=env_kwargs, **SMALL)
    with pytest.raises(NonFiniteDataError, match=r"not finite in torch.float32 \(rewards too large for it\)"):
        agent.learn(BATCH)
    finite_everywhere(agent)
    agent.close()


# ---------------------------------------------------------------- the check itself


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 2, 7, 64, 1000])
def test_all_finite_finds_every_nonfinite_entry(dtype, size):
    rng = np.random.default_rng(size)
    array = (rng.uniform(-1, 1, size=size) * np.finfo(dtype).max).astype(dtype)  # large, finite
    array[0] = np.finfo(dtype).max
    assert all_finite(array) and all_finite(array.reshape(1, -1)) and all_finite(array[::-1])
    for position in {0, size // 2, size - 1}:
        for bad in (np.nan, np.inf, -np.inf):
            poisoned = array.copy()
            poisoned[position] = bad
            assert not all_finite(poisoned) and not all_finite(poisoned.reshape(1, -1)[:, ::-1])
    assert all_finite(np.arange(size)) and all_finite(np.ones(size, dtype=bool))


def test_the_check_is_directly_on_the_vector_environment():
    stack = make_env_stack("CartPole-v1", 2, normalize_obs=True, normalize_reward=True)
    assert stack.obs_normalizer.env is stack.finite_check and stack.finite_check.env is stack.base
    stack.close()
