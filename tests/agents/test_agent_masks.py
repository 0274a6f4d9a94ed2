"""Action masks: read from ``info["action_mask"]`` or an ``action_masks()`` method, stored with the observation
they go with, never violated in training, prediction or evaluation; the masked policy step's curvature equals
the dense float64 Hessian of the masked mean KL on the layer-wise and the autograd paths."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from tiny_envs import MaskedEnv
from torch import Tensor, nn

from agents import TRPO
from agents.common.policies import OldPolicy, make_actor, masked_logits, mean_kl, policy_params
from trustregion import StepProblem

TINY = {"n_steps": 32, "hidden_sizes": (8,), "num_envs": 2}
ENVS = [
    "tests/Masked-discrete-info-v0",
    "tests/Masked-discrete-method-v0",
    "tests/Masked-multidiscrete-info-v0",
    "tests/Masked-multidiscrete-method-v0",
]


def sizes_of(space: gym.Space) -> list[int]:
    """The categories of each factor of a ``Discrete`` or ``MultiDiscrete`` action space."""
    return [int(space.n)] if isinstance(space, gym.spaces.Discrete) else [int(n) for n in space.nvec]


def allowed(masks: np.ndarray, actions: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Whether each action (one entry per factor) is allowed by its flat mask, per row."""
    flat = actions.reshape(len(actions), -1) + np.cumsum([0, *sizes[:-1]])
    return np.take_along_axis(masks.reshape(len(actions), -1), flat, axis=1).all(axis=1)


def random_masks(rng: np.random.Generator, count: int, sizes: list[int]) -> np.ndarray:
    """``count`` flat masks, each factor allowing a random non-empty subset of its categories."""
    blocks = []
    for size in sizes:
        block = rng.random((count, size)) < 0.4
        block[np.arange(count), rng.integers(size, size=count)] = True
        blocks.append(block)
    return np.concatenate(blocks, axis=1)


def one_line(info: pytest.ExceptionInfo) -> bool:
    return "\n" not in str(info.value)


# ------------------------------------------------------------------ training
@pytest.mark.parametrize("env", ENVS)
def test_training_never_takes_a_masked_action_and_stores_the_mask_of_each_observation(env):
    agent = TRPO(env, seed=0, **TINY)
    assert agent.collector.masks is not None, "the environment's masks were not found"
    rollouts = []
    collect = agent.collector.collect

    def recording_collect(*args):
        rollouts.append(collect(*args))
        return rollouts[-1]

    agent.collector.collect = recording_collect
    agent.learn(4 * agent.config.batch_size)  # MaskedEnv raises on a masked action
    sizes, dim = sizes_of(agent.env_stack.envs.single_action_space), agent.actor.output_dim
    assert len(rollouts) == 4
    for rollout in rollouts:
        assert rollout.masks is not None and rollout.masks.shape == (32, 2, dim)
        assert not rollout.masks.all()  # the masks bite
        # MaskedEnv's observation starts with its own mask: the stored mask at t is the one of obs at t,
        # except at a terminal observation, whose action gymnasium's autoreset ignores: all allowed there
        valid = rollout.valid
        np.testing.assert_array_equal(rollout.masks[valid], rollout.obs[..., :dim][valid] > 0.5)
        assert rollout.masks[~valid].all()
        assert allowed(rollout.masks.reshape(64, dim), rollout.actions.reshape(64, -1), sizes).all()
    agent.close()


@pytest.mark.parametrize("env", ["tests/Random-discrete-v0", "tests/Random-multidiscrete-v0", "CartPole-v1"])
def test_rollouts_have_masks_only_when_the_env_provides_them(env):
    agent = TRPO(env, seed=0, **TINY)
    assert agent.collector.masks is None
    batch = agent.rollout_batch()
    assert batch.masks is None
    assert agent.collector.collect(agent.actor, agent.rollout_networks()).masks is None
    agent.close()


# ------------------------------------------------------------------ the masked policy step's curvature
def masked_kl_hessian(actor: nn.Module, obs: Tensor, mask: Tensor, sizes: list[int]) -> Tensor:
    """``∇²_θ mean KL(π_old || π_θ)`` at ``θ_old`` of the masked categoricals, by autograd's dense Hessian."""
    names = [name for name, _ in actor.named_parameters()]
    shapes = [p.shape for p in actor.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in actor.parameters()])
    lowest = torch.finfo(theta.dtype).min
    with torch.no_grad():
        old_logits = actor(obs)

    def mean_masked_kl(flat: Tensor) -> Tensor:
        tensors = [
            part.reshape(shape) for part, shape in zip(flat.split([s.numel() for s in shapes]), shapes, strict=True)
        ]
        logits = torch.func.functional_call(actor, dict(zip(names, tensors, strict=True)), (obs,))
        total = torch.zeros(len(obs), dtype=flat.dtype)
        for old, new, allow in zip(
            old_logits.split(sizes, -1), logits.split(sizes, -1), mask.split(sizes, -1), strict=True
        ):
            old_log_probs = old.masked_fill(~allow, lowest).log_softmax(-1)
            new_log_probs = new.masked_fill(~allow, lowest).log_softmax(-1)
            total = total + (old_log_probs.exp() * (old_log_probs - new_log_probs)).sum(-1)
        return total.mean()

    return torch.autograd.functional.hessian(mean_masked_kl, theta)


def agent_curvature(agent: TRPO, old: OldPolicy, advantages: Tensor) -> Tensor:
    """The dense ``F`` of the agent's policy step on ``old`` (its ``Damped(F, λ)`` less ``λ I``)."""
    actor = agent.actor
    params = list(actor.parameters())

    def closure() -> tuple[Tensor, Tensor]:
        distribution = policy_params(actor, old.obs, old.mask)
        log_prob = actor.log_prob(distribution, old.actions)
        surrogate = -(torch.exp(log_prob - old.log_prob) * advantages).mean()
        return surrogate, mean_kl(actor, old, distribution, log_prob, "analytic")

    loss, kl = closure()
    gradient = torch.autograd.grad(loss, params, retain_graph=True)
    operator = agent.policy_curvature(old, old).build(StepProblem(params, loss, kl, gradient, closure))
    dense = operator.dense(torch.float64)
    return dense - agent.config.cg_damping * torch.eye(len(dense), dtype=torch.float64)


def layer_norm_actor(observation_space: gym.Space, action_space: gym.Space) -> nn.Module:
    """A policy network the layer-wise products cannot read (a LayerNorm): the autograd path."""
    outputs = sum(sizes_of(action_space))
    return nn.Sequential(nn.Linear(observation_space.shape[0], 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, outputs))


@pytest.mark.parametrize("env", ["tests/Masked-discrete-info-v0", "tests/Masked-multidiscrete-info-v0"])
@pytest.mark.parametrize(
    ("path", "options"),
    [
        ("layerwise", {}),
        ("autograd", {"actor": layer_norm_actor}),
        ("kl-hessian", {"curvature": "kl-hessian"}),
    ],
)
def test_masked_policy_curvature_is_the_hessian_of_the_masked_kl(env, path, options):
    agent = TRPO(env, seed=1, dtype="float64", **TINY, **options)
    traced = agent.gauss_newton is not None and agent.gauss_newton._traced is not None
    assert traced == (path == "layerwise")
    assert (agent.gauss_newton is None) == (path == "kl-hessian")
    batch = agent.rollout_batch()
    assert batch.masks is not None and not batch.masks.all()
    old = OldPolicy.of(agent.actor, batch.obs, batch.actions, batch.masks)
    fisher = agent_curvature(agent, old, batch.advantages)
    sizes = sizes_of(agent.env_stack.envs.single_action_space)
    reference = masked_kl_hessian(agent.actor.net, batch.obs, batch.masks, sizes)
    assert reference.abs().max() > 1e-3
    torch.testing.assert_close(fisher, reference, rtol=1e-8, atol=1e-10)
    unmasked = masked_kl_hessian(agent.actor.net, batch.obs, torch.ones_like(batch.masks), sizes)
    assert (unmasked - reference).abs().max() > 1e-3 * reference.abs().max()  # the masks matter here
    agent.close()


@pytest.mark.parametrize("env", ["tests/Masked-discrete-info-v0", "tests/Masked-multidiscrete-info-v0"])
def test_the_policy_step_is_constrained_by_the_masked_kl(env):
    agent = TRPO(env, seed=2, dtype="float64", **TINY)
    batch = agent.rollout_batch()
    sizes = sizes_of(agent.env_stack.envs.single_action_space)
    lowest = torch.finfo(torch.float64).min
    with torch.no_grad():
        before = agent.actor.net(batch.obs)
    result = agent.update_policy(batch)
    with torch.no_grad():
        after = agent.actor.net(batch.obs)
    kl = torch.zeros(len(batch.obs), dtype=torch.float64)
    for old, new, allow in zip(
        before.split(sizes, -1), after.split(sizes, -1), batch.masks.split(sizes, -1), strict=True
    ):
        old_log_probs = old.masked_fill(~allow, lowest).log_softmax(-1)
        new_log_probs = new.masked_fill(~allow, lowest).log_softmax(-1)
        kl += (old_log_probs.exp() * (old_log_probs - new_log_probs)).sum(-1)
    assert result.accepted and result.loss_before == pytest.approx(0.0, abs=1e-12)  # ratio 1 at θ_old
    assert 0 < kl.mean().item() <= agent.config.max_kl
    assert result.kl_after == pytest.approx(kl.mean().item(), rel=1e-9)
    agent.close()


# ------------------------------------------------------------------ the masked distributions
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("space", [gym.spaces.Discrete(5), gym.spaces.MultiDiscrete([3, 4, 2])])
def test_masked_actions_have_probability_zero_and_everything_stays_finite(dtype, space):
    torch.manual_seed(0)
    sizes = sizes_of(space)
    actor = make_actor(3, space, (8,)).to(dtype)
    obs = torch.randn(64, 3, dtype=dtype)
    mask = torch.from_numpy(random_masks(np.random.default_rng(0), 64, sizes))
    with torch.no_grad():
        for layer in actor.net.layers:
            layer.weight.mul_(200.0)  # large logits: no help from small values
    params = policy_params(actor, obs, mask)
    other = policy_params(actor, obs + 0.5, mask)
    probs = torch.cat([z.softmax(-1) for z in params.split(sizes, -1)], -1)
    assert torch.all(probs[~mask] == 0)
    for factor, allow, logits in zip(
        probs.split(sizes, -1), mask.split(sizes, -1), actor(obs).split(sizes, -1), strict=True
    ):
        reference = torch.where(allow, logits, -torch.inf).softmax(-1)  # the distribution over the allowed ones
        torch.testing.assert_close(factor, reference)
    actions = torch.stack([torch.multinomial(f, 1).squeeze(-1) for f in probs.split(sizes, -1)], -1)
    actions = actions.squeeze(-1) if isinstance(space, gym.spaces.Discrete) else actions
    assert allowed(mask.numpy(), actions.numpy(), sizes).all()
    entropy, kl, log_prob = actor.entropy(params), actor.kl(params, other), actor.log_prob(params, actions)
    reference_entropy = sum(-(f * f.log().nan_to_num(neginf=0.0)).sum(-1) for f in probs.split(sizes, -1))
    torch.testing.assert_close(entropy, reference_entropy)
    assert torch.isfinite(entropy).all() and torch.isfinite(kl).all() and torch.isfinite(log_prob).all()
    assert (kl >= -1e-6).all() and torch.equal(actor.kl(params, params), torch.zeros_like(kl))
    actor.kl(params.detach(), policy_params(actor, obs + 0.5, mask)).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in actor.parameters())


def test_masked_logits_use_the_most_negative_finite_value():
    logits = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False, True]])
    masked = masked_logits(logits, mask)
    assert masked[0, 1] == torch.finfo(torch.float64).min and torch.equal(masked[mask], logits[mask])


# ------------------------------------------------------------------ predict, act, evaluate
@pytest.mark.parametrize("env", ["tests/Masked-discrete-info-v0", "tests/Masked-multidiscrete-info-v0"])
def test_predict_and_act_never_return_a_masked_action(env):
    agent = TRPO(env, seed=0, **TINY).learn(64)
    sizes, dim = sizes_of(agent.env_stack.envs.single_action_space), agent.actor.output_dim
    rng = np.random.default_rng(1)
    obs = rng.uniform(-1, 1, (300, dim + 1)).astype(np.float32)
    masks = random_masks(rng, 300, sizes)
    with torch.no_grad():
        logits = agent.actor(torch.from_numpy(obs))
    factors = zip(logits.split(sizes, -1), torch.from_numpy(masks).split(sizes, -1), strict=True)
    best = [torch.where(m, z, -torch.inf).argmax(-1) for z, m in factors]
    expected = torch.stack(best, -1).reshape(300, -1).squeeze(-1).numpy()
    deterministic = agent.act(obs, action_masks=masks)
    np.testing.assert_array_equal(deterministic, expected)
    for deterministic_flag in (True, False):
        actions, _ = agent.predict(obs, deterministic=deterministic_flag, action_masks=masks)
        assert allowed(masks, actions, sizes).all()
        single, _ = agent.predict(obs[0], deterministic=deterministic_flag, action_masks=masks[0].astype(int))
        assert allowed(masks[:1], np.asarray(single)[None], sizes).all()
    stochastic = np.stack([agent.act(obs, deterministic=False, action_masks=masks) for _ in range(5)])
    assert len(np.unique(stochastic.reshape(5 * 300, -1), axis=0)) > 1  # sampled, not the mode
    assert all(allowed(masks, actions, sizes).all() for actions in stochastic)
    agent.close()


def test_action_masks_of_the_wrong_shape_or_allowing_nothing_are_refused():
    agent = TRPO("tests/Masked-discrete-info-v0", seed=0, **TINY)
    obs = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match=r"^action_masks must have 4 entries per observation") as info:
        agent.act(obs, action_masks=np.ones((3, 5), bool))
    assert one_line(info)
    empty = np.ones((3, 4), bool)
    empty[1] = False
    with pytest.raises(ValueError, match=r"^action_masks allow no action for some observation") as info:
        agent.predict(obs, action_masks=empty)
    assert one_line(info)
    agent.close()


@pytest.mark.parametrize("shape", [(7,), (2, 4), (4,)])
def test_action_masks_whose_size_does_not_fit_the_batch_are_named(shape):
    agent = TRPO("tests/Masked-discrete-info-v0", seed=0, **TINY)
    try:
        with pytest.raises(ValueError, match=r"^action_masks must have 4 entries per observation"):
            agent.act(np.zeros((3, 5), np.float32), action_masks=np.ones(shape, bool))
    finally:
        agent.close()


class EmptyMaskAtStep(gym.Wrapper):
    """Sets the info's action mask to all ``False`` at step ``at`` of an episode."""

    def __init__(self, env: gym.Env, at: int) -> None:
        super().__init__(env)
        self.at, self.t = at, 0

    def reset(self, **kwargs):
        self.t = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        if self.t == self.at:
            info = {**info, "action_mask": np.zeros_like(info["action_mask"])}
        return obs, reward, terminated, truncated, info


def test_env_masks_of_the_wrong_size_or_allowing_nothing_are_refused_naming_env():
    with pytest.raises(ValueError, match=r"^env: the action masks have shape \(5,\) per sub-environment") as info:
        TRPO(lambda: MaskedEnv(mask_size_error=1), **TINY)
    assert one_line(info)
    agent = TRPO(lambda: EmptyMaskAtStep(MaskedEnv(), 3), seed=0, **TINY)
    with pytest.raises(ValueError, match=r"^env: sub-environment 0's action mask allows no action at vector step 3"):
        agent.learn(agent.config.batch_size)
    agent.close()


@pytest.mark.parametrize("env", ENVS)
@pytest.mark.parametrize("deterministic", [True, False])
def test_evaluate_respects_the_env_masks(env, deterministic):
    agent = TRPO(env, seed=0, **TINY)
    assert agent.collector.masks is not None, "the environment's masks were not found"
    result = agent.evaluate(4, deterministic=deterministic)  # MaskedEnv raises on a masked action
    assert result["lengths"] == [6, 6, 6, 6]
    agent.close()


@pytest.mark.parametrize("provide", ["info", "method"])
def test_evaluate_on_a_given_env_reads_its_masks(provide):
    agent = TRPO(MaskedEnv(), seed=0, **TINY | {"num_envs": 1})
    for _ in range(3):
        assert agent.evaluate(1, env=MaskedEnv(provide=provide), deterministic=False)["lengths"] == [6]
    agent.close()
