"""Environments with their own vector implementation (``vectorization_mode="vector_entry_point"``,
CartPole-v1's ``CartPoleVectorEnv``): episode statistics, snapshots and bit-identical resume."""

from __future__ import annotations

import numpy as np
import pytest
from test_agent_trpo import assert_states_equal, full_state

from agents import TRPO
from agents.common.envs import make_env_stack
from agents.common.native_vector import make_native_vector_env

NATIVE = {"vectorization_mode": "vector_entry_point", "num_envs": 2}


def run(envs, actions):
    """Step ``envs`` through ``actions``; every output of every step, the wall-clock ``"t"`` left out."""
    steps = []
    for action in actions:
        obs, rewards, terminated, truncated, info = envs.step(action)
        episode = {key: info["episode"][key] for key in ("r", "l")} if "_episode" in info else None
        steps.append((obs, rewards, terminated, truncated, info.get("_episode"), episode))
    return steps


def assert_same_steps(first, second):
    assert len(first) == len(second)
    for t, (a, b) in enumerate(zip(first, second, strict=True)):
        for name, x, y in zip(("obs", "rewards", "terminated", "truncated", "_episode"), a[:5], b[:5], strict=True):
            np.testing.assert_array_equal(x, y, err_msg=f"{name} at step {t}")
        assert (a[5] is None) == (b[5] is None), t
        if a[5] is not None:
            for key in ("r", "l"):
                np.testing.assert_array_equal(a[5][key], b[5][key], err_msg=f"episode {key} at step {t}")


def reference_episodes(steps, num_envs):
    """Each finished episode as (step, sub-environment, return, length), summed from the raw outputs:
    the autoreset step after a done starts the next episode and counts towards none."""
    returns, lengths, pending_reset, episodes = np.zeros(num_envs), np.zeros(num_envs, int), [False] * num_envs, []
    for t, (_, rewards, terminated, truncated, _, _) in enumerate(steps):
        for i in range(num_envs):
            if pending_reset[i]:
                returns[i], lengths[i], pending_reset[i] = 0.0, 0, False
                continue
            returns[i] += rewards[i]
            lengths[i] += 1
            if terminated[i] or truncated[i]:
                episodes.append((t, i, returns[i], lengths[i]))
                pending_reset[i] = True
    return episodes


def recorded_episodes(steps):
    return [
        (t, int(i), float(episode["r"][i]), int(episode["l"][i]))
        for t, (*_, mask, episode) in enumerate(steps)
        if mask is not None
        for i in np.flatnonzero(mask)
    ]


def test_episode_statistics_are_the_true_returns_and_lengths_of_every_episode():
    envs = make_native_vector_env("CartPole-v1", 3, {"max_episode_steps": 25})  # terminations and truncations
    envs.reset(seed=0)
    steps = run(envs, np.random.default_rng(0).integers(0, 2, size=(300, 3)))
    episodes = recorded_episodes(steps)
    assert episodes == reference_episodes(steps, 3)
    assert len(episodes) > 20 and all(r == length for _, _, r, length in episodes)  # CartPole: reward 1 a step
    lengths = [length for *_, length in episodes]
    assert max(lengths) == 25 and min(lengths) < 25
    assert all(mask is None or mask.any() for *_, mask, _ in steps)  # the key only when an episode ended
    envs.close()


@pytest.mark.parametrize("where", ["mid-episode", "right after an episode end"])
def test_a_restored_snapshot_continues_bit_identically(where):
    actions = np.random.default_rng(1).integers(0, 2, size=(400, 3))
    envs = make_native_vector_env("CartPole-v1", 3, {"max_episode_steps": 40})
    envs.reset(seed=2)
    head = run(envs, actions[:30])
    while (head[-1][2] | head[-1][3]).any() != (where != "mid-episode"):  # step on to the state asked for
        head += run(envs, actions[len(head) : len(head) + 1])
    (snapshot,) = envs.get_attr("snapshot")
    straight = run(envs, actions[len(head) :])
    restored = make_native_vector_env("CartPole-v1", 3, {"max_episode_steps": 40})
    restored.reset(seed=99)  # another state entirely, overwritten by the snapshot
    restored.set_attr("snapshot", [snapshot])
    assert restored.get_attr("snapshot") == (snapshot,)
    resumed = run(restored, actions[len(head) :])
    assert_same_steps(resumed, straight)
    assert sum(mask is not None for *_, mask, _ in straight) > 10  # many episode ends after the restore
    assert recorded_episodes(head + resumed) == reference_episodes(head + resumed, 3)  # returns summed across it
    for env in (envs, restored):
        env.close()


def test_episode_statistics_equal_the_sync_modes_for_the_same_states_and_actions():
    """The sync mode's sub-environments are put into the native environment's states at every reset
    (the two draw initial states from different generators); the same actions then give the same
    trajectories, the same dones and the same episode statistics."""
    native = make_native_vector_env("CartPole-v1", 2, {})
    sync = make_env_stack("CartPole-v1", 2, vectorization_mode="sync").base
    native.reset(seed=0)
    sync.reset(seed=0)
    sub_envs = [sub_env.unwrapped for sub_env in sync.envs]
    reset = np.ones(2, dtype=bool)  # the sub-environments that have just started an episode
    native_steps, sync_steps = [], []
    for action in np.random.default_rng(3).integers(0, 2, size=(600, 2)):
        for i in np.flatnonzero(reset):
            sub_envs[i].state = native.unwrapped.state[:, i].copy()
        done = native_steps[-1][2] | native_steps[-1][3] if native_steps else np.zeros(2, dtype=bool)
        native_steps += run(native, [action])
        sync_steps += run(sync, [action])
        ongoing = ~done  # the others take their autoreset step
        np.testing.assert_array_equal(native_steps[-1][0][ongoing], sync_steps[-1][0][ongoing])
        for a, b in zip(native_steps[-1][1:4], sync_steps[-1][1:4], strict=True):
            np.testing.assert_array_equal(a, b)
        reset = done
    assert recorded_episodes(native_steps) == recorded_episodes(sync_steps)
    assert len(recorded_episodes(native_steps)) > 20
    native.close()
    sync.close()


@pytest.mark.parametrize(
    "options",
    [{"n_steps": 256}, {"n_steps": 256, "normalize_obs": True, "normalize_reward": True}],
    ids=["cartpole", "cartpole-normalized"],
)
def test_resume_is_bit_identical(options, tmp_path):
    batch = 2 * options["n_steps"]
    straight = TRPO("CartPole-v1", seed=5, **NATIVE, **options).learn(4 * batch)
    first_half = TRPO("CartPole-v1", seed=5, **NATIVE, **options).learn(2 * batch)
    first_half.save(tmp_path / "checkpoint.pt")
    first_half.close()
    resumed = TRPO.load(tmp_path / "checkpoint.pt")
    assert resumed.config.vectorization_mode == "vector_entry_point"
    resumed.learn(4 * batch, reset_num_timesteps=False)
    assert resumed.global_step == straight.global_step == 4 * batch
    assert_states_equal(full_state(resumed), full_state(straight))
    assert straight.collector.episodes > 10 and straight.history[-1]["mean_return"] > 0
    for agent in (straight, resumed):
        agent.close()


def test_observations_are_normalised_with_the_native_environment():
    agent = TRPO("CartPole-v1", seed=0, normalize_obs=True, n_steps=256, **NATIVE)
    rollout = agent.collector.collect(agent.actor, agent.rollout_networks())
    rms = agent.env_stack.obs_normalizer.obs_rms
    assert rms.count == pytest.approx(2 * (256 + 1), abs=1e-3)  # the reset and every step, both sub-environments
    obs = rollout.obs.reshape(-1, 4)
    assert np.all(np.abs(obs.mean(axis=0)) < 0.5) and np.all((obs.std(axis=0) > 0.5) & (obs.std(axis=0) < 2.0))
    agent.close()


def test_an_environment_without_a_vector_entry_point_is_one_line_naming_the_modes():
    with pytest.raises(ValueError, match="Pendulum-v1 has no vector_entry_point") as error:
        TRPO("Pendulum-v1", **NATIVE)
    assert "\n" not in str(error.value) and "vectorization_mode='sync'" in str(error.value)
