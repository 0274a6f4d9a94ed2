"""The TRPO / NPG agents: the trust-region step's guarantees, the critic's separation, the
Fisher paths, determinism, save/load and bit-identical resume, and argument checking."""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
import torch

from agents import NPG, TRPO
from agents.common.checkpoint import save_checkpoint
from trustregion import BacktrackingLineSearch, Damped, KLHessian

SMALL = {"n_steps": 128, "num_envs": 2, "hidden_sizes": (16, 16)}


def parameters(module):
    return [p.detach().clone() for p in module.parameters()]


def assert_same(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def rollout_batch(agent):
    return agent.rollout_batch()


def policy_step(env, **options):
    """The flat change of the actor's parameters in one accepted policy step of a fresh float64 agent."""
    agent = TRPO(env, seed=3, dtype="float64", **options, **SMALL)
    before = parameters(agent.actor)
    assert agent.update_policy(rollout_batch(agent)).accepted
    step = torch.cat([(p - b).reshape(-1) for p, b in zip(parameters(agent.actor), before, strict=True)])
    agent.close()
    return step


def test_cartpole_learns():
    agent = TRPO("CartPole-v1", seed=0).learn(40_000)
    assert agent.history[-1]["mean_return"] >= 195
    assert agent.evaluate(10)["mean_return"] >= 195
    agent.close()


@pytest.mark.parametrize(
    ("env", "options"),
    [
        ("CartPole-v1", {}),
        ("Pendulum-v1", {}),
        ("tests/Random-multidiscrete-v0", {}),
        ("tests/Random-multibinary-v0", {}),
        ("Pendulum-v1", {"kl_estimator": "sample"}),
        ("CartPole-v1", {"curvature": "kl-hessian", "fisher_fraction": 0.2}),
    ],
)
def test_kl_within_trust_region_after_every_accepted_update(env, options):
    agent = TRPO(env, seed=1, **SMALL, **options).learn(6 * 2 * 128)
    accepted = [row for row in agent.history if row["accepted"]]
    assert len(accepted) >= 4
    for row in accepted:
        assert row["kl"] <= agent.config.max_kl
        assert row["kl"] > 0.0  # the sample estimate too: (r - 1) - log r is never negative
        assert row["policy_improvement"] > 0.0
        assert math.isfinite(row["policy_loss"])
    agent.close()


@pytest.mark.parametrize("env", ["Pendulum-v1", "CartPole-v1", "tests/Random-multidiscrete-v0"])
def test_gauss_newton_and_kl_hessian_give_the_same_step(env):
    sync = {"vectorization_mode": "sync"}  # the batch these tolerances were set on
    steps = {curvature: policy_step(env, curvature=curvature, **sync) for curvature in ("gauss-newton", "kl-hessian")}
    assert torch.linalg.vector_norm(steps["gauss-newton"]) > 0
    torch.testing.assert_close(steps["gauss-newton"], steps["kl-hessian"], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("env", ["Pendulum-v1", "CartPole-v1"])
def test_a_preconditioned_solve_to_convergence_gives_the_same_step(env):
    """Jacobi and K-FAC change the Krylov space, not the system: solved to convergence, the step is the same."""
    steps = {name: policy_step(env, preconditioner=name, cg_iters=400) for name in ("none", "jacobi", "kfac")}
    for preconditioner in ("jacobi", "kfac"):
        torch.testing.assert_close(steps[preconditioner], steps["none"], rtol=1e-6, atol=1e-9)


def test_a_preconditioner_needs_the_gauss_newton_curvature():
    with pytest.raises(ValueError, match="preconditioner='kfac' needs curvature='gauss-newton'"):
        TRPO("CartPole-v1", preconditioner="kfac", curvature="kl-hessian")


def test_kl_closure_compares_against_the_frozen_old_distribution():
    """At θ_old the constraint is exactly 0; after the step it is the positive KL the line search measured."""
    agent = TRPO("Pendulum-v1", seed=0, **SMALL)
    batch = rollout_batch(agent)
    seen = []
    original_step = agent.policy_optimizer.step

    def recording_step(closure, curvature=None):
        def recording_closure():
            loss, kl = closure()
            seen.append(kl.item())
            return loss, kl

        return original_step(recording_closure, curvature)

    agent.policy_optimizer.step = recording_step
    result = agent.update_policy(batch)
    assert seen[0] == 0.0
    assert result.accepted and seen[-1] == result.kl_after > 0.0
    agent.close()


@pytest.mark.parametrize("curvature", ["gauss-newton", "kl-hessian"])
def test_log_std_is_updated_and_constrained_by_the_policy_step(curvature):
    agent = TRPO("Pendulum-v1", seed=0, curvature=curvature, **SMALL)
    batch = rollout_batch(agent)
    with torch.no_grad():
        old_mean, old_log_std = (t.clone() for t in agent.actor(batch.obs))
    result = agent.update_policy(batch)
    assert result.accepted
    assert not torch.equal(agent.actor.log_std.detach(), old_log_std)
    # the measured KL includes the log_std move: recompute it from copies of the old parameters
    with torch.no_grad():
        kl = agent.actor.kl((old_mean, old_log_std), agent.actor(batch.obs)).mean().item()
    assert result.kl_after == pytest.approx(kl, rel=1e-5)
    agent.close()


def test_policy_step_never_touches_the_critic_and_critic_epochs_never_touch_the_actor():
    agent = TRPO("CartPole-v1", seed=0, **SMALL)
    batch = rollout_batch(agent)
    critic_before, actor_before = parameters(agent.critic), parameters(agent.actor)
    assert agent.update_policy(batch).accepted
    assert_same(parameters(agent.critic), critic_before)
    actor_after_step = parameters(agent.actor)
    agent.update_value(batch)
    assert_same(parameters(agent.actor), actor_after_step)
    assert not all(torch.equal(a, b) for a, b in zip(parameters(agent.critic), critic_before, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(actor_after_step, actor_before, strict=True))
    owned = {id(p) for group in agent.value_optimizer.param_groups for p in group["params"]}
    assert owned == {id(p) for p in agent.critic.parameters()}
    agent.close()


def test_line_search_failure_is_not_ignored():
    """When every trial violates the KL bound, the step is rejected and the parameters are restored."""
    agent = TRPO("CartPole-v1", seed=0, **SMALL)
    batch = rollout_batch(agent)
    true_kl = agent.actor.kl
    agent.actor.kl = lambda old, new: true_kl(old, new) + (0.0 if torch.is_grad_enabled() else 1.0)
    before = parameters(agent.actor)
    result = agent.update_policy(batch)
    assert not result.accepted
    assert result.reason.value == "line_search_exhausted"
    assert result.closure_calls == 1 + agent.config.backtrack_iters + 1
    assert_same(parameters(agent.actor), before)
    agent.close()


def test_nonfinite_batch_is_rejected_without_touching_the_parameters():
    agent = TRPO("Pendulum-v1", seed=0, **SMALL)
    batch = rollout_batch(agent)
    batch.obs[3, 0] = float("nan")  # NaN log-probabilities, Fisher products and direction
    before = parameters(agent.actor)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = agent.update_policy(batch)
    assert not result.accepted
    assert result.reason.value.startswith("nonfinite")
    assert any("rejected" in str(w.message) for w in caught)
    assert_same(parameters(agent.actor), before)
    assert all(torch.isfinite(p).all() for p in agent.actor.parameters())
    agent.close()


def test_fisher_subsample_feeds_the_curvature():
    agent = TRPO("CartPole-v1", seed=0, fisher_fraction=0.2, **SMALL)
    batch = rollout_batch(agent)
    sizes = []
    gauss_newton = agent.gauss_newton
    original_with_inputs = gauss_newton.with_inputs
    gauss_newton.with_inputs = lambda inputs, **kwargs: (
        sizes.append(len(inputs)),
        original_with_inputs(inputs, **kwargs),
    )[1]
    assert agent.update_policy(batch).accepted
    assert sizes == [math.ceil(0.2 * len(batch.obs))]
    agent.close()


@pytest.mark.parametrize("kl_estimator", ["analytic", "sample"])
def test_fisher_subsample_feeds_the_kl_hessian(kl_estimator):
    """With curvature="kl-hessian" the step's curvature is the Hessian of the mean KL on the subsample:
    a constraint function of its own, evaluated on the subsample's states, while the closure sees the batch."""
    agent = TRPO("Pendulum-v1", seed=0, fisher_fraction=0.2, curvature="kl-hessian", kl_estimator=kl_estimator, **SMALL)
    batch = rollout_batch(agent)
    curvatures, sizes = [], []
    original_step = agent.policy_optimizer.step

    def recording_step(closure, curvature=None):
        curvatures.append(curvature)
        return original_step(closure, curvature)

    agent.policy_optimizer.step = recording_step
    agent.actor.register_forward_pre_hook(lambda module, inputs: sizes.append(len(inputs[0])))
    assert agent.update_policy(batch).accepted
    (curvature,) = curvatures
    assert isinstance(curvature, Damped) and curvature.damping == agent.config.cg_damping
    assert isinstance(curvature.curvature, KLHessian) and curvature.curvature.constraint is not None
    subsample = math.ceil(0.2 * len(batch.obs))
    assert sizes.count(subsample) == 1  # the curvature's KL, built once
    assert set(sizes) == {len(batch.obs), subsample}  # the old policy and every closure call: the whole batch
    agent.close()


def test_whole_batch_kl_hessian_differentiates_the_closure_kl():
    agent = TRPO("CartPole-v1", seed=0, fisher_fraction=1.0, curvature="kl-hessian", **SMALL)
    curvatures = []
    original_step = agent.policy_optimizer.step
    agent.policy_optimizer.step = lambda closure, curvature=None: (
        curvatures.append(curvature),
        original_step(closure, curvature),
    )[1]
    assert agent.update_policy(rollout_batch(agent)).accepted
    (curvature,) = curvatures
    assert isinstance(curvature.curvature, KLHessian) and curvature.curvature.constraint is None
    assert agent.gauss_newton is None
    agent.close()


def test_npg_takes_the_kl_normalised_step_without_line_search():
    agent = NPG("CartPole-v1", seed=0, **SMALL).learn(4 * 2 * 128)
    assert agent.config.line_search is False
    for row in agent.history:
        assert row["accepted"] == 1 and row["backtracks"] == 0 and row["step_fraction"] == 1.0
        assert row["kl"] > 0.0
    agent.close()


def test_same_seed_gives_identical_runs():
    first = TRPO("Pendulum-v1", seed=7, **SMALL).learn(3 * 2 * 128)
    second = TRPO("Pendulum-v1", seed=7, **SMALL).learn(3 * 2 * 128)
    third = TRPO("Pendulum-v1", seed=8, **SMALL).learn(3 * 2 * 128)
    strip = [{k: v for k, v in row.items() if not k.endswith(("seconds", "per_second"))} for row in first.history]
    assert strip == [
        {k: v for k, v in row.items() if not k.endswith(("seconds", "per_second"))} for row in second.history
    ]
    assert_same(parameters(first.actor), parameters(second.actor))
    assert not all(torch.equal(a, b) for a, b in zip(parameters(first.actor), parameters(third.actor), strict=True))
    for agent in (first, second, third):
        agent.close()


def without_timings(history):
    return [{k: v for k, v in row.items() if not k.endswith(("seconds", "per_second"))} for row in history]


def full_state(agent):
    """What 'bit-identical' compares: every parameter, the critic's Adam state, the normalisation
    statistics, the random generators, the counters and the logged metrics (without timings)."""
    state = agent.state_dict()
    progress = state["parts"]["progress"]
    progress = {**progress, "history": without_timings(progress["history"])}
    return {**state, "parts": {**state["parts"], "progress": progress}}


def assert_states_equal(first, second, path="state"):
    if isinstance(first, dict):
        assert first.keys() == second.keys(), path
        for key in first:
            assert_states_equal(first[key], second[key], f"{path}.{key}")
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second), path
        for index, (a, b) in enumerate(zip(first, second, strict=True)):
            assert_states_equal(a, b, f"{path}[{index}]")
    elif isinstance(first, torch.Tensor):
        assert torch.equal(first, second), path
    elif isinstance(first, np.ndarray):
        assert np.array_equal(first, second), path
    elif isinstance(first, float) and math.isnan(first):
        assert isinstance(second, float) and math.isnan(second), path
    else:
        assert first == second, path


@pytest.mark.parametrize(
    ("env", "options"),
    [
        ("CartPole-v1", {}),  # the CartPole defaults: its own vector env, 8 × 128 steps, 2 + 2 iterations
        ("Pendulum-v1", {"normalize_obs": True, "normalize_reward": True, **SMALL}),
        ("CartPole-v1", {"vectorization_mode": "async", **SMALL}),
    ],
    ids=["cartpole", "pendulum-normalized", "cartpole-async"],
)
def test_resume_is_bit_identical(env, options, tmp_path):
    straight = TRPO(env, seed=5, **options)
    batch = straight.config.batch_size
    straight.learn(4 * batch)
    first_half = TRPO(env, seed=5, **options).learn(2 * batch)
    first_half.save(tmp_path / "checkpoint.pt")
    first_half.close()
    resumed = TRPO.load(tmp_path / "checkpoint.pt").learn(4 * batch, reset_num_timesteps=False)  # a target
    assert resumed.global_step == straight.global_step == 4 * batch
    assert_states_equal(full_state(resumed), full_state(straight))
    again = TRPO.load(tmp_path / "checkpoint.pt").learn(2 * batch)  # by default, steps counted from the checkpoint
    assert_states_equal(full_state(again), full_state(straight))
    for agent in (straight, resumed, again):
        agent.close()


def test_save_load_round_trip_predicts_and_evaluates_identically(tmp_path):
    agent = TRPO("Pendulum-v1", seed=2, normalize_obs=True, **SMALL).learn(2 * 2 * 128)
    agent.save(tmp_path / "agent.pt")
    loaded = TRPO.load(tmp_path / "agent.pt")
    assert loaded.config == agent.config
    observations = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.act(observations), agent.act(observations))
    single = loaded.act(observations[0])
    assert single.shape == (1,)
    np.testing.assert_allclose(single, agent.act(observations)[0], rtol=1e-5)  # batch of 1 vs 5: rounding
    action, state = loaded.predict(observations, deterministic=True)  # Stable-Baselines3's signature
    np.testing.assert_array_equal(action, agent.act(observations))
    assert state is None
    np.testing.assert_array_equal(loaded.normalize_observation(observations), agent.normalize_observation(observations))
    assert loaded.evaluate(3) == agent.evaluate(3)
    # evaluation uses the saved statistics and leaves them alone
    rms = loaded.env_stack.obs_normalizer.obs_rms
    mean, count = rms.mean.copy(), rms.count
    loaded.evaluate(2)
    assert np.array_equal(rms.mean, mean) and rms.count == count
    # the statistics are really applied: the policy sees normalised observations
    assert not np.array_equal(loaded.normalize_observation(observations), observations)
    agent.close()
    loaded.close()


def test_normalised_observations_and_rewards_are_clipped_in_training_and_evaluation():
    clip_obs, clip_reward = 0.5, 0.05
    options = {"normalize_obs": True, "normalize_reward": True, "clip_obs": clip_obs, "clip_reward": clip_reward}
    agent = TRPO("Pendulum-v1", seed=0, **options, **SMALL)
    buffer = agent.collector.collect(agent.actor, agent.rollout_networks())
    # the bounds are reached, so the clip is active rather than vacuous
    assert np.abs(buffer.obs).max() == pytest.approx(clip_obs)
    assert np.abs(buffer.rewards).max() == pytest.approx(clip_reward)
    # evaluation sees observations as training did: normalised with the frozen statistics, then clipped
    rms, epsilon = agent.env_stack.obs_normalizer.obs_rms, agent.env_stack.obs_normalizer.epsilon
    raw = np.random.default_rng(0).normal(scale=5.0, size=(64, 3))
    expected = np.clip((raw - rms.mean) / np.sqrt(rms.var + epsilon), -clip_obs, clip_obs)
    np.testing.assert_allclose(agent.normalize_observation(raw), expected, rtol=1e-6)
    agent.close()


def test_load_accepts_a_run_directory(tmp_path):
    agent = TRPO("CartPole-v1", seed=0, **SMALL).learn(256, run_dir=tmp_path)
    loaded = TRPO.load(tmp_path)
    assert loaded.global_step == 256
    assert_same(parameters(loaded.actor), parameters(agent.actor))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_kl", 0.0),
        ("max_kl", -0.01),
        ("gamma", 1.5),
        ("gae_lambda", -0.1),
        ("n_steps", 0),
        ("num_envs", 0),
        ("cg_iters", 0),
        ("cg_damping", -1.0),
        ("backtrack_ratio", 1.0),
        ("backtrack_iters", -1),
        ("fisher_fraction", 0.0),
        ("fisher_fraction", 1.5),
        ("value_lr", float("nan")),
        ("value_minibatch_size", 0),
        ("curvature", "fisher"),
        ("preconditioner", "shampoo"),
        ("kl_estimator", "mc"),
        ("vectorization_mode", "threads"),
        ("hidden_sizes", (64, 0)),
        ("normalize_obs", "yes"),
        ("pin_cores", 1),
        ("clip_obs", 0.0),
        ("clip_reward", -10.0),
        ("dtype", "float16"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_the_argument(name, value):
    with pytest.raises(ValueError, match=name):
        TRPO("CartPole-v1", **{name: value})


def test_unknown_hyperparameter_is_named():
    with pytest.raises(ValueError, match="max_kll"):
        TRPO("CartPole-v1", max_kll=0.01)


def test_bad_learn_and_evaluate_arguments():
    agent = TRPO("CartPole-v1", **SMALL)
    with pytest.raises(ValueError, match="total_timesteps"):
        agent.learn(-1)
    with pytest.raises(ValueError, match="n_episodes"):
        agent.evaluate(0)
    with pytest.raises(ValueError, match="observation"):
        agent.predict(np.zeros(5))
    with pytest.raises(ValueError, match="observation"):
        agent.predict(np.zeros((2, 3, 4)))
    agent.close()


@pytest.mark.parametrize(("env", "space"), [("tests/TextObservation-v0", "Text"), ("tests/TupleAction-v0", "Tuple")])
def test_environments_with_unsupported_spaces_are_refused(env, space):
    with pytest.raises(ValueError, match=space):
        TRPO(env)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_resume_right_after_an_episode_end_replays_the_pending_autoreset(mode, tmp_path):
    """The scripted chain's first episode terminates on the rollout's last step: the checkpoint
    holds a pending next-step autoreset, which the restored environment must perform."""
    options = {"num_envs": 1, "n_steps": 2, "vectorization_mode": mode}
    agent = TRPO("tests/ScriptedChain-v0", seed=0, **options)
    agent.collector.collect(agent.actor, agent.rollout_networks())
    assert agent.collector.prev_done[0]
    agent.save(tmp_path / "checkpoint.pt")
    restored = TRPO.load(tmp_path / "checkpoint.pt")
    for expected_valid in ([False, True], [True, True]):  # the reset step, then episode 1 going on
        rollout = agent.collector.collect(agent.actor, agent.rollout_networks())
        restored_rollout = restored.collector.collect(restored.actor, restored.rollout_networks())
        np.testing.assert_array_equal(restored_rollout.valid[:, 0], expected_valid)
        for name in ("obs", "rewards", "terminated", "truncated", "valid", "actions", "values", "last_values"):
            np.testing.assert_array_equal(getattr(restored_rollout, name), getattr(rollout, name), err_msg=name)
    np.testing.assert_array_equal(restored_rollout.obs[:, 0], [[1, 1], [2, 1]])
    agent.close()
    restored.close()


def test_checkpoint_schema_covers_every_stateful_part(tmp_path):
    """Save, load, and compare each part's state_dict; every stateful attribute of the agent is a part."""
    agent = TRPO("Pendulum-v1", seed=4, normalize_obs=True, normalize_reward=True, **SMALL).learn(2 * 2 * 128)
    parts = agent.checkpoint_parts()
    assert set(parts) == {
        "actor",
        "critic",
        "value_optimizer",
        "policy_optimizer",
        "collector",
        "generator",
        "predict_generator",
        "progress",
    }
    covered = {id(part) for part in parts.values()} | {id(getattr(part, "generator", None)) for part in parts.values()}
    for name, value in vars(agent).items():
        if hasattr(value, "state_dict") or isinstance(value, (torch.Generator, np.random.Generator)):
            assert id(value) in covered, f"agent.{name} is stateful but not a checkpoint part"
    assert agent.collector.rng is not None and "rng" in parts["collector"].state_dict()
    agent.save(tmp_path / "checkpoint.pt")
    loaded = TRPO.load(tmp_path / "checkpoint.pt")
    loaded_parts = loaded.checkpoint_parts()
    for name, part in parts.items():
        assert_states_equal(comparable(loaded_parts[name].state_dict()), comparable(part.state_dict()), name)
    agent.close()
    loaded.close()


def comparable(state):
    """A part's state with each environment snapshot unpickled into its attributes, each pickled alone:
    a restored simulator holds equal values, though not the same sharing of objects (pickle's memo)."""
    if not isinstance(state, dict) or "env" not in state:
        return state
    snapshots = [pickle.loads(snapshot) for snapshot in state["env"]["snapshots"]]
    for snapshot in snapshots:
        snapshot["layers"] = [{key: pickle.dumps(v) for key, v in layer.items()} for layer in snapshot["layers"]]
    return {**state, "env": {**state["env"], "snapshots": snapshots}}


def test_load_state_dict_refuses_parts_that_do_not_match():
    agent = TRPO("CartPole-v1", seed=0, **SMALL)
    state = agent.state_dict()
    del state["parts"]["collector"]
    state["parts"]["extra"] = {}
    with pytest.raises(ValueError, match=r"missing \['collector'\], unknown \['extra'\]"):
        agent.load_state_dict(state)
    agent.close()


@pytest.mark.parametrize("found", [2, None])
def test_checkpoint_of_another_format_is_refused_in_one_line(found, tmp_path):
    agent = TRPO("CartPole-v1", seed=0, **SMALL)
    state = agent.state_dict()
    agent.close()
    if found is None:
        del state["format"]
    else:
        state["format"] = found
    save_checkpoint(tmp_path / "old.pt", state)
    with pytest.raises(ValueError) as error:
        TRPO.load(tmp_path / "old.pt")
    message = str(error.value)
    assert f"checkpoint format {found!r}" in message and "reads format 3" in message and "old.pt" in message
    assert "\n" not in message


def test_one_construction_path():
    agent = TRPO("Pendulum-v1", seed=3, **SMALL)
    again = TRPO(config=agent.config)
    same = TRPO.from_config(agent.config)
    npg = NPG(config=agent.config)  # a config is taken as it is: no NPG override on top
    assert again.config == same.config == npg.config == agent.config
    assert_same(parameters(again.actor), parameters(agent.actor))
    assert npg.config.line_search is True and isinstance(npg.policy_optimizer.line_search, BacktrackingLineSearch)
    for bad in ({"env": "CartPole-v1"}, {"seed": 1}, {"max_kl": 0.02}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TRPO(config=agent.config, **bad)
    with pytest.raises(TypeError, match="TRPOConfig"):
        TRPO(config=agent.config.to_dict())
    for each in (agent, again, same, npg):
        each.close()
