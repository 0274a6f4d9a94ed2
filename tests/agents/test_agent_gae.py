"""GAE against hand-computed values, and the whole rollout path on a scripted environment:
next-step autoreset transitions masked, terminations not bootstrapped, truncations
bootstrapped from the value of the true final observation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents import TRPO
from agents.common.rollout import compute_gae, make_batch

GAMMA, LAM = 0.9, 0.8


def column(*values, dtype=float):
    return np.array(values, dtype=dtype)[:, None]


def test_gae_by_hand_with_truncation_termination_and_autoreset_steps():
    # t0 plain, t1 truncated (its final observation is stored at t2, V = 10), t2 autoreset,
    # t3 terminated, t4 autoreset; the rollout ends there with V(next obs) = 7.
    rewards = column(1, 2, 0, 3, 0)
    values = column(0.5, 1.0, 10.0, 2.0, 4.0)
    terminated = column(0, 0, 0, 1, 0, dtype=bool)
    truncated = column(0, 1, 0, 0, 0, dtype=bool)
    valid = column(1, 1, 0, 1, 0, dtype=bool)
    advantages, returns = compute_gae(rewards, values, terminated, truncated, valid, np.array([7.0]), GAMMA, LAM)
    a1 = 2 + GAMMA * 10.0 - 1.0  # truncation: bootstrap from V(final obs), nothing after it
    a3 = 3 - 2.0  # termination: no bootstrap
    a0 = (1 + GAMMA * 1.0 - 0.5) + GAMMA * LAM * a1
    np.testing.assert_allclose(advantages[:, 0], [a0, a1, 0.0, a3, 0.0])
    np.testing.assert_allclose(returns[[0, 1, 3], 0], [a0 + 0.5, a1 + 1.0, a3 + 2.0])


@pytest.mark.parametrize(("terminated", "expected"), [(True, 1 - 0.5), (False, 1 + GAMMA * 5.0 - 0.5)])
def test_gae_when_the_rollout_ends_on_the_done_step(terminated, expected):
    advantages, _ = compute_gae(
        column(1.0),
        column(0.5),
        column(terminated, dtype=bool),
        column(not terminated, dtype=bool),
        column(True, dtype=bool),
        np.array([5.0]),  # V of the final observation, which next-step autoreset returns
        GAMMA,
        LAM,
    )
    assert advantages[0, 0] == pytest.approx(expected)


def test_gae_without_episode_ends_is_the_discounted_sum_of_td_errors():
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    last = rng.normal(size=2)
    flags = np.zeros((6, 2), dtype=bool)
    advantages, _ = compute_gae(rewards, values, flags, flags, ~flags, last, GAMMA, LAM)
    next_values = np.vstack([values[1:], last])
    deltas = rewards + GAMMA * next_values - values
    expected = [sum((GAMMA * LAM) ** k * deltas[t + k] for k in range(6 - t)) for t in range(6)]
    np.testing.assert_allclose(advantages, np.array(expected))


class ScriptedCritic:
    """V(s) = 10 t + episode on ScriptedChain observations [t, episode]: every value is known.

    Stands in for the rollout networks: uniform logits for the (ignored) actions, scripted values.
    """

    @staticmethod
    def value(obs):
        return 10.0 * obs[:, 0] + obs[:, 1]

    def __call__(self, obs):
        return np.zeros((len(obs), 3), dtype=obs.dtype), self.value(obs)


def reference_advantages(obs, rewards, terminated, truncated, valid, last_value):
    """Plain per-transition reference, written independently of compute_gae."""
    values = ScriptedCritic.value(obs)
    advantages = np.zeros(len(rewards))
    for t in range(len(rewards)):
        if not valid[t]:
            continue
        total, discount, k = 0.0, 1.0, t
        while True:
            next_value = values[k + 1] if k + 1 < len(rewards) else last_value
            delta = rewards[k] + GAMMA * (0.0 if terminated[k] else next_value) - values[k]
            total += discount * delta
            if terminated[k] or truncated[k] or k + 1 == len(rewards):
                break
            discount *= GAMMA * LAM
            k += 1
        advantages[t] = total
    return advantages


def test_rollout_on_scripted_chain_masks_autoreset_and_bootstraps_truncation():
    # Episodes alternate: terminate after 2 steps, then run into the 4-step time limit (truncated).
    agent = TRPO("tests/ScriptedChain-v0", seed=0, num_envs=1, n_steps=12, gamma=GAMMA, gae_lambda=LAM)
    rollout = agent.collector.collect(agent.actor, ScriptedCritic())
    obs = rollout.obs[:, 0]
    np.testing.assert_array_equal(rollout.valid[:, 0], [1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(rollout.rewards[:, 0], [1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(np.flatnonzero(rollout.terminated[:, 0]), [1, 9])
    np.testing.assert_array_equal(np.flatnonzero(rollout.truncated[:, 0]), [6])
    np.testing.assert_array_equal(obs[7], [4, 1])  # the true final observation of the truncated episode
    assert list(agent.collector.recent_returns) == [3.0, 10.0, 3.0]

    advantages, returns = compute_gae(
        rollout.rewards,
        rollout.values,
        rollout.terminated,
        rollout.truncated,
        rollout.valid,
        rollout.last_values,
        GAMMA,
        LAM,
    )
    # the truncated step bootstraps from V([4, 1]) = 41; the terminated ones from nothing
    assert advantages[6, 0] == pytest.approx(4 + GAMMA * 41.0 - 31.0)
    assert advantages[9, 0] == pytest.approx(2 - 12.0)
    expected = reference_advantages(
        obs,
        rollout.rewards[:, 0],
        rollout.terminated[:, 0],
        rollout.truncated[:, 0],
        rollout.valid[:, 0],
        rollout.last_values[0],
    )
    np.testing.assert_allclose(advantages[:, 0], expected, rtol=1e-6)

    batch = make_batch(rollout, advantages, returns, torch.float32)
    assert len(batch.obs) == int(rollout.valid.sum()) == 9
    assert not any(np.array_equal(o, [4, 1]) for o in batch.obs.numpy())  # autoreset transitions left out
    agent.close()


def test_rollouts_continue_across_iterations_with_the_autoreset_mask():
    """An episode that ends on a rollout's last step is reset on the next rollout's first (invalid) step."""
    agent = TRPO("tests/ScriptedChain-v0", seed=0, num_envs=1, n_steps=2)
    first = agent.collector.collect(agent.actor, ScriptedCritic())  # t0, t1 (terminated)
    assert first.terminated[1, 0]
    assert first.last_values[0] == pytest.approx(20.0)  # V of the final observation [2, 0]
    second = agent.collector.collect(agent.actor, ScriptedCritic())
    np.testing.assert_array_equal(second.valid[:, 0], [False, True])
    np.testing.assert_array_equal(second.obs[1, 0], [0, 1])
    agent.close()


def test_logged_returns_are_raw_when_rewards_are_normalised():
    """Episode statistics are recorded inside each sub-environment, below reward normalisation and clipping."""
    agent = TRPO(
        "tests/ScriptedChain-v0",
        seed=0,
        num_envs=2,
        n_steps=12,
        normalize_obs=True,
        normalize_reward=True,
        clip_reward=0.5,
    )
    rollout = agent.collector.collect(agent.actor, ScriptedCritic())
    assert np.abs(rollout.rewards).max() <= 0.5  # the rollout holds scaled, clipped rewards
    assert sorted(agent.collector.recent_returns) == [3.0, 3.0, 3.0, 3.0, 10.0, 10.0]  # two envs, three episodes each
    assert agent.collector.episodes == 6
    agent.close()
