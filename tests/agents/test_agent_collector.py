"""The collector on its own: it returns each rollout as a value, carries observations, done flags,
episode statistics and the noise generator from one rollout to the next, and saves all of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.common.collector import Collector
from agents.common.envs import make_env_stack
from agents.common.policies import Critic, RolloutNetworks, make_actor
from agents.common.rollout import Rollout

FIELDS = ("obs", "actions", "values", "rewards", "terminated", "truncated", "valid", "last_values")


LAYOUTS = {"tests/ScriptedChain-v0": ((), np.int64), "Pendulum-v1": ((1,), np.float32)}
"""One action as a rollout stores it: Discrete as an index, Box as a float vector."""


def make_collector(env="tests/ScriptedChain-v0", num_envs=2, n_steps=5, seed=0):
    env_stack = make_env_stack(env, num_envs)
    obs_dim = env_stack.envs.single_observation_space.shape[0]
    torch.manual_seed(seed)
    actor = make_actor(obs_dim, env_stack.envs.single_action_space, (8,))
    critic = Critic(obs_dim, (8,), "tanh")
    collector = Collector(env_stack, n_steps, *LAYOUTS[env], np.float32, seed)
    return collector, actor, RolloutNetworks(actor.net, critic.net)


def test_collect_returns_a_rollout_and_keeps_only_the_carry_over():
    collector, actor, networks = make_collector()
    first = collector.collect(actor, networks)
    assert isinstance(first, Rollout)
    assert first.obs.shape == (5, 2, 2) and first.obs.dtype == np.float32
    assert first.actions.shape == (5, 2) and first.actions.dtype == np.int64
    assert first.size == 10 and first.last_values.shape == (2,)
    np.testing.assert_array_equal(first.valid[0], [True, True])  # a fresh reset: nothing pending
    # the values are the critic's, and last_values is V of the observation the next rollout starts from
    values = networks(first.obs.reshape(-1, 2))[1].reshape(5, 2)
    np.testing.assert_array_equal(first.values, values.astype(np.float64))
    np.testing.assert_array_equal(first.last_values, networks(collector.obs.astype(np.float32))[1].astype(np.float64))
    kept = {name: getattr(first, name).copy() for name in FIELDS}
    carried = collector.obs.copy()
    second = collector.collect(actor, networks)
    assert second is not first
    for name in FIELDS:  # a returned rollout is a value: the next collect does not write into it
        np.testing.assert_array_equal(getattr(first, name), kept[name], err_msg=name)
    np.testing.assert_array_equal(second.obs[0], carried)  # the next rollout starts where the last one ended
    np.testing.assert_array_equal(second.valid[0], ~(first.terminated[-1] | first.truncated[-1]))
    collector.close()


def test_episode_statistics_come_from_the_collector():
    collector, actor, networks = make_collector(num_envs=1, n_steps=12)
    assert collector.episode_statistics()["episodes"] == 0
    assert np.isnan(collector.episode_statistics()["mean_return"])
    collector.collect(actor, networks)
    statistics = collector.episode_statistics()
    assert statistics["episodes"] == 3 and list(collector.recent_returns) == [3.0, 10.0, 3.0]
    assert statistics["mean_return"] == pytest.approx(16.0 / 3) and statistics["mean_length"] == pytest.approx(8 / 3)
    collector.close()


@pytest.mark.parametrize("env", ["tests/ScriptedChain-v0", "Pendulum-v1"])
def test_state_dict_continues_the_next_rollout_exactly(env):
    collector, actor, networks = make_collector(env=env, n_steps=7)
    collector.collect(actor, networks)
    state = collector.state_dict()
    expected = collector.collect(actor, networks)
    fresh, _, _ = make_collector(env=env, n_steps=7, seed=1)  # another seed: everything must come from the state
    fresh.load_state_dict(state)
    restored = fresh.collect(actor, networks)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(restored, name), getattr(expected, name), err_msg=name)
    assert fresh.episodes == collector.episodes and list(fresh.recent_returns) == list(collector.recent_returns)
    collector.close()
    fresh.close()
