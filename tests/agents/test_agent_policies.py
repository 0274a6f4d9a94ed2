"""Actors and critic: log-probabilities and KLs against torch.distributions, KL = 0 at θ_old,
Gauss-Newton Fisher = KL Hessian, numpy rollout copies = torch modules, refused spaces."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import distributions as D

from agents.common.observations import observation_layout
from agents.common.policies import (
    BernoulliActor,
    CategoricalActor,
    Critic,
    GaussianActor,
    MultiCategoricalActor,
    OldPolicy,
    RolloutNetworks,
    make_actor,
    mean_kl,
    parameters_shared,
)
from trustregion import GaussNewton, KLHessian, StepProblem

OBS_DIM = 3
SPACES = {
    "box": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
    "discrete": gym.spaces.Discrete(3),
    "multidiscrete": gym.spaces.MultiDiscrete([3, 2]),
    "multibinary": gym.spaces.MultiBinary(3),
}


def build(kind: str, seed: int = 0, hidden=(5,)):
    torch.manual_seed(seed)
    actor = make_actor(OBS_DIM, SPACES[kind], hidden, "tanh", log_std_init=-0.3).double()
    with torch.no_grad():  # move away from the near-zero output initialisation so the test is not degenerate
        for p in actor.parameters():
            p.add_(0.5 * torch.randn_like(p))
    obs = torch.randn(7, OBS_DIM, dtype=torch.float64)
    return actor, obs


def torch_distribution(actor, params):
    """A second implementation of each head, from torch.distributions."""
    if isinstance(actor, GaussianActor):
        mean, log_std = params
        return D.Independent(D.Normal(mean, log_std.exp().expand_as(mean)), 1)
    if isinstance(actor, CategoricalActor):
        return D.Categorical(logits=params)
    if isinstance(actor, BernoulliActor):
        return D.Independent(D.Bernoulli(logits=params), 1)
    raise AssertionError


@pytest.mark.parametrize("kind", ["box", "discrete", "multibinary"])
def test_log_prob_kl_entropy_match_torch_distributions(kind):
    actor, obs = build(kind)
    generator = torch.Generator().manual_seed(1)
    old = actor(obs)
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    new = actor(obs)
    actions = actor.sample(old, generator)
    reference_old, reference_new = torch_distribution(actor, old), torch_distribution(actor, new)
    reference_actions = actions.double() if kind == "multibinary" else actions
    torch.testing.assert_close(actor.log_prob(old, actions), reference_old.log_prob(reference_actions))
    torch.testing.assert_close(actor.kl(old, new), D.kl_divergence(reference_old, reference_new))
    torch.testing.assert_close(actor.entropy(old), reference_old.entropy())


def test_multidiscrete_log_prob_and_kl_are_sums_over_factors():
    actor, obs = build("multidiscrete")
    old = actor(obs)
    new = old + 0.3 * torch.randn_like(old)
    actions = actor.sample(old, torch.Generator().manual_seed(0))
    old_factors, new_factors = torch.split(old, [3, 2], -1), torch.split(new, [3, 2], -1)
    log_prob = sum(D.Categorical(logits=z).log_prob(actions[:, i]) for i, z in enumerate(old_factors))
    kl = sum(
        D.kl_divergence(D.Categorical(logits=a), D.Categorical(logits=b))
        for a, b in zip(old_factors, new_factors, strict=True)
    )
    torch.testing.assert_close(actor.log_prob(old, actions), log_prob)
    torch.testing.assert_close(actor.kl(old, new), kl)
    assert torch.all(actor.kl(old, new) > 0)


def _kl_problem(actor, obs):
    """The mean-KL closure of the agent: frozen old distribution, current parameters."""
    with torch.no_grad():
        old = actor(obs)
        old = tuple(t.clone() for t in old) if isinstance(old, tuple) else old.clone()

    def mean_kl():
        return actor.kl(old, actor(obs)).mean()

    return mean_kl


@pytest.mark.parametrize("kind", list(SPACES))
def test_kl_closure_is_exactly_zero_at_old_parameters_with_nonzero_fisher(kind):
    actor, obs = build(kind)
    mean_kl = _kl_problem(actor, obs)
    kl = mean_kl()
    assert kl.item() == 0.0
    params = list(actor.parameters())
    gradient = torch.autograd.grad(kl, params, create_graph=True)
    assert max(g.abs().max().item() for g in gradient) < 1e-12  # zero up to rounding: θ_old is the minimum
    problem = StepProblem(params, kl, kl, [torch.zeros_like(p) for p in params], mean_kl)
    fisher = KLHessian().build(problem).dense(torch.float64)
    assert torch.linalg.matrix_norm(fisher) > 1e-3
    # moving the parameters makes the KL to the frozen old distribution positive
    with torch.no_grad():
        for p in params:
            p.add_(0.05)
    assert mean_kl().item() > 0.0


@pytest.mark.parametrize("kind", list(SPACES))
def test_gauss_newton_fisher_equals_kl_hessian(kind):
    actor, obs = build(kind)
    mean_kl = _kl_problem(actor, obs)
    params = list(actor.parameters())
    kl = mean_kl()
    problem = StepProblem(params, kl, kl, [torch.zeros_like(p) for p in params], mean_kl)
    kl_hessian = KLHessian().build(problem).dense(torch.float64)
    gauss_newton = GaussNewton.for_module(actor, obs, actor.output_fisher()).build(problem)
    torch.testing.assert_close(gauss_newton.dense(torch.float64), kl_hessian, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("kind", list(SPACES))
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_numpy_rollout_copy_computes_the_torch_networks(kind, activation):
    torch.manual_seed(0)
    actor = make_actor(OBS_DIM, SPACES[kind], (8, 6), activation).double()
    critic = Critic(OBS_DIM, (7, 5), activation).double()
    obs = torch.randn(6, OBS_DIM, dtype=torch.float64)
    actor_outputs, values = RolloutNetworks(actor.net, critic.net)(obs.numpy())
    params = actor(obs)
    logits = params[0] if isinstance(params, tuple) else params
    np.testing.assert_allclose(actor_outputs, logits.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(values, critic(obs).detach().numpy(), rtol=1e-12, atol=1e-12)


def test_numpy_samplers_follow_the_policy_distribution():
    """Empirical frequencies/moments of 40k numpy samples against the torch distribution."""
    rng = np.random.default_rng(0)
    obs = np.repeat(np.array([[0.3, -0.2, 0.5]]), 40_000, axis=0)
    obs_tensor = torch.from_numpy(obs)
    for kind in SPACES:
        actor, _ = build(kind)
        params = actor(obs_tensor[:1])
        outputs = actor.net(obs_tensor).detach().numpy()
        samples = actor.rollout_head()(outputs, actor.rollout_noise(rng, outputs.shape, outputs.dtype))
        if kind == "box":
            mean, log_std = (t.detach().numpy() for t in params)
            np.testing.assert_allclose(samples.mean(0), mean[0], atol=0.02)
            np.testing.assert_allclose(samples.std(0), np.exp(log_std), rtol=0.02)
        elif kind == "discrete":
            frequencies = np.bincount(samples, minlength=3) / len(samples)
            np.testing.assert_allclose(frequencies, torch.softmax(params[0], -1).detach().numpy(), atol=0.01)
        elif kind == "multidiscrete":
            for i, z in enumerate(torch.split(params[0], [3, 2])):
                frequencies = np.bincount(samples[:, i], minlength=len(z)) / len(samples)
                np.testing.assert_allclose(frequencies, torch.softmax(z, -1).detach().numpy(), atol=0.01)
        else:
            np.testing.assert_allclose(samples.mean(0), torch.sigmoid(params[0]).detach().numpy(), atol=0.01)


def test_box_actions_are_clipped_for_the_env_only():
    space = gym.spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 2.0], np.float32))
    actor = GaussianActor(OBS_DIM, space, (4,), "tanh", 0.0)
    unclipped = np.array([[-3.0, 0.5], [0.2, 5.0]], dtype=np.float32)
    np.testing.assert_array_equal(actor.to_env(unclipped), np.array([[-1.0, 0.5], [0.2, 2.0]], np.float32))
    assert unclipped[0, 0] == -3.0  # the stored sample is untouched
    params = (torch.zeros(2, 2), actor.log_std.detach())
    log_prob = actor.log_prob(params, torch.from_numpy(unclipped))
    reference = D.Normal(torch.zeros(2, 2), torch.ones(2, 2)).log_prob(torch.from_numpy(unclipped)).sum(-1)
    torch.testing.assert_close(log_prob, reference)


def test_actor_and_critic_share_no_parameters():
    for kind in SPACES:
        actor, _ = build(kind)
        critic = Critic(OBS_DIM, (5,), "tanh").double()
        assert not parameters_shared(actor, critic)
        assert not parameters_shared(critic, actor)
    assert parameters_shared(actor, actor)  # the check itself can see sharing


def test_multidiscrete_and_multibinary_get_their_own_heads():
    assert isinstance(make_actor(3, SPACES["multidiscrete"], (4,)), MultiCategoricalActor)
    assert isinstance(make_actor(3, SPACES["multibinary"], (4,)), BernoulliActor)


@pytest.mark.parametrize(
    "space",
    [
        gym.spaces.Dict({"a": gym.spaces.Discrete(2)}),
        gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(3))),
        gym.spaces.Text(5),
        gym.spaces.Graph(gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(2)),
        gym.spaces.Sequence(gym.spaces.Discrete(2)),
    ],
    ids=lambda space: type(space).__name__,
)
def test_unsupported_action_spaces_are_refused_with_the_fix(space):
    with pytest.raises(ValueError, match=type(space).__name__) as action_error:
        make_actor(3, space, (4,))
    assert "wrap" in str(action_error.value)


@pytest.mark.parametrize(
    "space",
    [
        gym.spaces.Text(5),
        gym.spaces.Graph(gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(2)),
        gym.spaces.Sequence(gym.spaces.Discrete(2)),
        gym.spaces.Dict({"fine": gym.spaces.Discrete(2), "not": gym.spaces.Text(3)}),
    ],
    ids=lambda space: type(space).__name__,
)
def test_unsupported_observation_spaces_are_refused_in_one_line_with_the_fix(space):
    with pytest.raises(ValueError, match="unsupported observation space") as error:
        observation_layout(space)
    assert "ObservationWrapper" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("kind", list(SPACES))
def test_sample_kl_estimator_is_zero_at_old_never_negative_and_unbiased(kind):
    """``mean_kl(..., "sample")``, the one estimator the closure and the subsample's KLHessian share."""
    actor, obs = build(kind)
    obs = obs.repeat(5000, 1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        actions = actor.sample(actor(obs), generator)
        old = OldPolicy.of(actor, obs, actions)

        def estimates():
            params = actor(obs)
            log_prob = actor.log_prob(params, actions)
            return mean_kl(actor, old, params, log_prob, "sample"), mean_kl(actor, old, params, log_prob, "analytic")

        sample, analytic = estimates()
        assert sample.item() == 0.0 and analytic.item() == 0.0
        for p in actor.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
        sample, analytic = estimates()
        for index in range(50):  # each transition's estimate on its own: never negative
            single = old.subset(torch.tensor([index]))
            params = actor(single.obs)
            assert mean_kl(actor, single, params, actor.log_prob(params, single.actions), "sample").item() >= 0.0
    assert analytic.item() > 0.0
    assert sample.item() == pytest.approx(analytic.item(), rel=0.1)
