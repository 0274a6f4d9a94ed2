"""Users' own environments: ids, instances, factories, ``"module:factory"`` names and vector envs; wrappers;
``Discrete`` / ``Dict`` / ``Tuple`` observations (flattened as ``gymnasium.spaces.flatten`` does, with only the
``Box`` entries normalised); save/load and evaluation of such runs; one-line errors for bad input."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from tiny_envs import (
    DiscreteObservationEnv,
    FixedSpaceEnv,
    MixedObservationEnv,
    ObservationRecorder,
    RandomRewardEnv,
    ScriptedChain,
    make_random_discrete,
    make_scripted_chain,
)

from agents import TRPO
from agents.common.envs import NormalizeBoxEntries

TINY = {"n_steps": 32, "hidden_sizes": (8,)}


def one_line_error(match: str):
    """``pytest.raises(ValueError, match=...)``; :func:`assert_one_line` then checks the message is one line."""
    return pytest.raises(ValueError, match=match)


def assert_one_line(info: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(info.value)


def parameters(agent: TRPO) -> list[torch.Tensor]:
    return [p.detach().clone() for p in [*agent.actor.parameters(), *agent.critic.parameters()]]


def assert_same_parameters(first: TRPO, second: TRPO) -> None:
    for a, b in zip(parameters(first), parameters(second), strict=True):
        assert torch.equal(a, b)


def trains(agent: TRPO, iterations: int = 2) -> None:
    """``iterations`` iterations move the actor and the critic, with finite metrics."""
    before = parameters(agent)
    agent.learn(iterations * agent.config.batch_size)
    assert agent.iteration == iterations
    assert all(np.isfinite(row["policy_loss"]) and np.isfinite(row["value_loss"]) for row in agent.history)
    assert not all(torch.equal(a, b) for a, b in zip(before, parameters(agent), strict=True))
    agent.close()


def recorded_rollout(env_factory, **options):
    """An agent on one sub-environment of ``env_factory`` and a rollout, with the raw observations it saw."""
    seen: list = []
    options = {"seed": 0, "num_envs": 1, **TINY, **options}
    agent = TRPO(env_factory, wrappers=[lambda env: ObservationRecorder(env, seen)], **options)
    rollout = agent.collector.collect(agent.actor, agent.rollout_networks())
    return agent, rollout, seen


# ------------------------------------------------------------------ where environments come from
@pytest.mark.parametrize(
    "env",
    [
        "tests/ScriptedChain-v0",
        make_scripted_chain,
        "tiny_envs:make_scripted_chain",
        lambda: gym.wrappers.TimeLimit(ScriptedChain(), 4),
    ],
    ids=["id", "factory", "module-factory", "lambda"],
)
def test_ids_and_factories_train(env):
    agent = TRPO(env, seed=0, num_envs=2, **TINY)
    assert agent.env_stack.num_envs == 2
    trains(agent)


def test_an_importable_factory_needs_nothing_again_and_a_lambda_does():
    by_name = TRPO("tiny_envs:make_scripted_chain", seed=0, **TINY)
    by_object = TRPO(make_scripted_chain, seed=0, **TINY)
    anonymous = TRPO(lambda: make_scripted_chain(), seed=0, **TINY)
    assert by_name.config.env == by_object.config.env == "tiny_envs:make_scripted_chain"
    assert by_name.config.custom == by_object.config.custom == ()
    assert anonymous.config.custom == ("env",)
    for agent in (by_name, by_object, anonymous):
        agent.close()


def test_an_instance_is_one_sub_environment_and_trains():
    env = RandomRewardEnv()
    agent = TRPO(env, seed=0, **TINY)
    assert agent.config.num_envs == 1 and agent.config.custom == ("env",)
    assert agent.env_stack.base.envs[0].unwrapped is env  # that object, not a copy
    trains(agent)


def test_a_user_vector_env_is_used_as_it_is_and_trains():
    envs = gym.vector.SyncVectorEnv([make_scripted_chain] * 3)
    agent = TRPO(envs, seed=0, **TINY)
    assert agent.config.num_envs == 3 and agent.config.custom == ("env",)
    assert agent.env_stack.base.env.env is envs  # below the episode statistics, the user's object
    trains(agent)


def test_an_instance_with_several_envs_is_refused_with_the_fix():
    with one_line_error(r"num_envs=2.*factory") as info:
        TRPO(RandomRewardEnv(), num_envs=2, **TINY)
    assert_one_line(info)


def test_a_vector_env_with_another_num_envs_is_refused():
    envs = gym.vector.SyncVectorEnv([make_scripted_chain] * 3)
    with one_line_error(r"num_envs=2 differs from the vector env's 3") as info:
        TRPO(envs, num_envs=2, **TINY)
    assert_one_line(info)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: 1 / 0, r"env factory <lambda> raised ZeroDivisionError"),
        (lambda: 42, r"env factory <lambda> returned int, not a gymnasium.Env"),
    ],
    ids=["raises", "not-an-env"],
)
def test_a_broken_factory_is_named_in_one_line(factory, match):
    with one_line_error(match) as info:
        TRPO(factory, **TINY)
    assert_one_line(info)


@pytest.mark.parametrize("env", [42, 1.5, ""], ids=["int", "float", "empty"])
def test_an_env_of_no_known_kind_is_refused_naming_env(env):
    with one_line_error(r"^env must be a registered gymnasium id, a gymnasium.Env") as info:
        TRPO(env, **TINY)
    assert_one_line(info)


def test_env_kwargs_with_a_factory_are_refused():
    with one_line_error(r"env_kwargs apply to registered ids only") as info:
        TRPO(make_scripted_chain, env_kwargs={"lengths": (1, 1)}, **TINY)
    assert_one_line(info)


# ------------------------------------------------------------------ wrappers
def test_wrappers_wrap_every_sub_environment_once():
    built: list[gym.Env] = []

    def count(env: gym.Env) -> gym.Env:
        built.append(env)
        return env

    agent = TRPO(make_scripted_chain, seed=0, num_envs=3, wrappers=[count], **TINY)
    assert len(built) == 3 and len({id(env) for env in built}) == 3
    assert agent.config.custom == ("wrappers",)  # a local function: load needs it again
    agent.close()


def test_an_importable_wrapper_scales_the_rollout_rewards_and_is_rebuilt_by_name(tmp_path):
    plain = TRPO(make_scripted_chain, seed=0, **TINY)
    scaled = TRPO(make_scripted_chain, seed=0, wrappers=["tiny_envs:scale_reward_by_ten"], **TINY)
    assert scaled.config.wrappers == ("tiny_envs:scale_reward_by_ten",) and scaled.config.custom == ()
    rewards = [agent.collector.collect(agent.actor, agent.rollout_networks()).rewards for agent in (plain, scaled)]
    assert rewards[0].max() > 0  # ScriptedChain's rewards are t + 1: the actions play no part
    np.testing.assert_array_equal(rewards[1], 10 * rewards[0])
    scaled.learn(scaled.config.batch_size, run_dir=tmp_path)
    loaded = TRPO.load(tmp_path)  # the factory and the wrapper imported again by name
    np.testing.assert_array_equal(loaded.collector.collect(loaded.actor, loaded.rollout_networks()).rewards % 10, 0)
    for agent in (plain, scaled, loaded):
        agent.close()


def test_bad_wrappers_are_refused_in_one_line():
    with one_line_error(r"wrappers: cannot import 'tiny_envs:no_such_wrapper'") as info:
        TRPO(make_scripted_chain, wrappers=["tiny_envs:no_such_wrapper"], **TINY)
    assert_one_line(info)
    with one_line_error(r"wrappers must be callables"):
        TRPO(make_scripted_chain, wrappers=[3], **TINY)
    with one_line_error(r"wrap them inside your VectorEnv"):
        TRPO(gym.vector.SyncVectorEnv([make_scripted_chain]), wrappers=[lambda env: env], **TINY)


# ------------------------------------------------------------------ observations
def test_discrete_observations_are_one_hot_in_the_layout_and_the_rollout():
    agent, rollout, seen = recorded_rollout(DiscreteObservationEnv)
    layout = agent.layout
    assert layout.shape == (5,) and layout.flatten and not layout.image and not layout.box_entries.any()
    obs = rollout.obs[:, 0]
    np.testing.assert_array_equal(obs, np.eye(5, dtype=obs.dtype)[np.asarray(seen[: len(obs)])])
    assert len(set(seen)) > 1
    agent.close()


def test_frozen_lake_observations_are_one_hot():
    agent = TRPO("FrozenLake-v1", seed=0, **TINY)
    assert agent.layout.shape == (16,) and not agent.layout.box_entries.any()
    obs = agent.collector.collect(agent.actor, agent.rollout_networks()).obs.reshape(-1, 16)
    assert set(np.unique(obs)) <= {0.0, 1.0}
    np.testing.assert_array_equal(obs.sum(-1), 1.0)
    agent.close()


@pytest.mark.parametrize("container", ["dict", "tuple"])
def test_dict_and_tuple_observations_are_flattened_as_gymnasium_flattens_them(container):
    agent, rollout, seen = recorded_rollout(lambda: MixedObservationEnv(container))
    space = MixedObservationEnv(container).observation_space
    assert agent.layout.shape == (spaces.flatdim(space),) == (2 + 3 + 5,)
    np.testing.assert_array_equal(agent.layout.box_entries, [True] * 2 + [False] * 8)
    expected = np.stack([spaces.flatten(space, obs) for obs in seen[: agent.config.n_steps]])
    np.testing.assert_array_equal(rollout.obs[:, 0], expected.astype(rollout.obs.dtype))
    agent.close()


def test_dict_observations_train():
    trains(TRPO("tests/MixedObservation-v0", seed=0, num_envs=2, **TINY))


def test_normalize_obs_normalises_only_the_box_entries():
    agent, rollout, seen = recorded_rollout(MixedObservationEnv, normalize_obs=True, n_steps=400)
    normalizer = agent.env_stack.obs_normalizer
    assert isinstance(normalizer, NormalizeBoxEntries)
    np.testing.assert_array_equal(normalizer.entries, [0, 1])
    obs = rollout.obs[:, 0]
    raw = np.stack([spaces.flatten(agent.env_stack.base.single_observation_space, o) for o in seen[:400]])
    np.testing.assert_array_equal(obs[:, 2:], raw[:, 2:])  # one-hot entries pass through unchanged
    assert np.abs(raw[:, :2].mean(0) - 3.0).max() < 0.2  # uniform in [2, 4]
    later = obs[100:, :2]
    assert np.abs(later.mean(0)).max() < 0.15 and np.abs(later.std(0) - 1.0).max() < 0.15
    np.testing.assert_allclose(normalizer.obs_rms.mean, [3.0, 3.0], atol=0.15)
    agent.close()


@pytest.mark.parametrize("normalize_obs", [False, True])
def test_act_and_predict_take_raw_dict_observations_one_or_a_batch(normalize_obs):
    agent = TRPO("tests/MixedObservation-v0", seed=0, normalize_obs=normalize_obs, **TINY).learn(64)
    env = MixedObservationEnv()
    env.reset(seed=1)
    observations = [env.step(0)[0] for _ in range(20)]
    flat = np.stack([spaces.flatten(env.observation_space, obs) for obs in observations])
    with torch.no_grad():
        logits = agent.actor(torch.from_numpy(agent.normalize_observation(flat)).float())
    expected = logits.argmax(-1).numpy()
    assert len(set(expected.tolist())) > 1  # the observations matter
    singles = [agent.act(obs) for obs in observations]
    assert all(np.ndim(action) == 0 for action in singles)
    np.testing.assert_array_equal(singles, expected)
    batch = {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}
    np.testing.assert_array_equal(agent.act(batch), expected)
    action, state = agent.predict(batch, deterministic=True)
    np.testing.assert_array_equal(action, expected)
    assert state is None
    agent.close()


def test_an_observation_that_fits_neither_one_nor_a_batch_is_refused():
    agent = TRPO("tests/MixedObservation-v0", seed=0, **TINY)
    with one_line_error(r"^observation does not fit") as info:
        agent.act({"box": np.zeros((2, 3, 2), np.float32), "discrete": 0, "multi": np.zeros(2)})
    assert_one_line(info)
    with one_line_error(r"^observation does not fit"):
        agent.act({"wrong": 1})
    agent.close()


@pytest.mark.parametrize(
    ("space", "named"),
    [
        (spaces.Text(4), "Text"),
        (spaces.Graph(spaces.Box(0.0, 1.0, (2,)), None), "Graph"),
        (spaces.Sequence(spaces.Discrete(3)), "Sequence"),
        (spaces.Dict({"fine": spaces.Discrete(2), "text": spaces.Text(3)}), "Text"),
    ],
    ids=["text", "graph", "sequence", "dict-of-text"],
)
def test_unsupported_observation_spaces_are_refused_in_one_line(space, named):
    with one_line_error(rf"^env: unsupported observation space {named}\(.*ObservationWrapper") as info:
        TRPO(FixedSpaceEnv(space), **TINY)
    assert_one_line(info)


# ------------------------------------------------------------------ save, load, evaluate
def test_an_instance_run_needs_env_to_load_and_then_continues_bit_identically(tmp_path):
    straight = TRPO(RandomRewardEnv(), seed=5, **TINY).learn(3 * 32)
    first = TRPO(RandomRewardEnv(), seed=5, **TINY).learn(2 * 32, run_dir=tmp_path)
    first.close()
    with one_line_error(r"Python objects.*\bTRPO\.load\(.*, env=\.\.\.\)$") as info:
        TRPO.load(tmp_path)
    assert_one_line(info)
    resumed = TRPO.load(tmp_path, env=RandomRewardEnv()).learn(32)
    assert resumed.global_step == straight.global_step == 3 * 32
    assert_same_parameters(resumed, straight)
    assert [row["mean_return"] for row in resumed.history] == [row["mean_return"] for row in straight.history]
    resumed.close()
    straight.close()


def test_a_run_of_an_importable_factory_loads_without_arguments_and_continues_bit_identically(tmp_path):
    options = {"seed": 4, "num_envs": 2, **TINY}
    straight = TRPO("tiny_envs:make_random_discrete", **options).learn(3 * 64)
    first = TRPO(make_random_discrete, **options).learn(2 * 64, run_dir=tmp_path)
    first.close()
    resumed = TRPO.load(tmp_path).learn(64)
    assert resumed.config.env == "tiny_envs:make_random_discrete"
    assert_same_parameters(resumed, straight)
    resumed.close()
    straight.close()


def test_evaluate_on_an_instance_or_a_factory():
    agent = TRPO(make_random_discrete, seed=0, **TINY).learn(64)
    on_factory = agent.evaluate(2, env=make_random_discrete)
    on_instance = agent.evaluate(1, env=RandomRewardEnv())
    assert on_factory["lengths"] == [20, 20] and on_instance["lengths"] == [20]
    assert on_instance["returns"][0] == on_factory["returns"][0]  # the same seed for the first episode
    by_name = agent.evaluate(2, env="tiny_envs:make_random_discrete")
    assert by_name == on_factory
    agent.close()


def test_an_agent_trained_on_a_vector_env_needs_env_to_evaluate():
    agent = TRPO(gym.vector.SyncVectorEnv([make_random_discrete] * 2), seed=0, **TINY)
    with one_line_error(r"evaluate needs env= when training ran on a VectorEnv") as info:
        agent.evaluate(2)
    assert_one_line(info)
    assert agent.evaluate(2, env=make_random_discrete)["lengths"] == [20, 20]
    agent.close()


def test_an_agent_trained_on_an_instance_evaluates_on_a_copy_of_it():
    env = RandomRewardEnv()
    agent = TRPO(env, seed=0, **TINY).learn(32)
    state = env.np_random.bit_generator.state
    assert agent.evaluate(1)["lengths"] == [20]
    assert env.np_random.bit_generator.state == state  # the training instance is left alone
    agent.close()


def test_an_agent_trained_on_an_instance_evaluates_several_episodes():
    agent = TRPO(RandomRewardEnv(), seed=0, **TINY)
    result = agent.evaluate(3)
    assert result["lengths"] == [20, 20, 20] and len(set(result["returns"])) == 3  # three seeds, three episodes
    agent.close()


def test_cartpoles_own_vector_env_gives_way_to_sub_environments_when_they_are_needed():
    """CartPole defaults to its vector_entry_point env, which has no sub-environments to wrap or to be."""
    identity = lambda env: gym.wrappers.TransformReward(env, lambda reward: reward)  # noqa: E731
    wrapped = TRPO("CartPole-v1", wrappers=[identity], **TINY)
    instance = TRPO(gym.make("CartPole-v1"), **TINY)
    assert wrapped.config.vectorization_mode == instance.config.vectorization_mode == "sync"
    for agent in (wrapped, instance):
        agent.learn(64)
        agent.close()
    native = TRPO("CartPole-v1", **TINY)
    assert native.config.vectorization_mode == "vector_entry_point"
    native.close()
    native_mode = {"vectorization_mode": "vector_entry_point"}
    with pytest.raises(ValueError, match=r"^wrappers apply to sub-environments") as error:
        TRPO("CartPole-v1", wrappers=[identity], **native_mode, **TINY)
    assert "\n" not in str(error.value)


def test_an_instance_trained_agent_is_evaluated_through_its_wrappers():
    """Evaluation copies the instance and wraps each copy as training wrapped the instance."""
    built = []

    def count(env):
        built.append(True)
        return env

    agent = TRPO(gym.make("CartPole-v1"), wrappers=[count], **TINY)
    before = len(built)
    agent.evaluate(3)
    assert len(built) == before + 3
    agent.close()
