"""Users' networks (modules and builders), image observations and their encoders, and the device argument.

References: the dense float64 Hessian of the mean KL at ``θ_old`` for the Gauss-Newton operator of a user's
actor (layer-wise and autograd paths); the encoders' features recomputed by hand (a transposed image, pixels
divided by 255 outside the network, an image cut out of a flat ``Dict`` observation)."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from tiny_envs import ImageDictEnv, ImageEnv, ObservationRecorder, RandomRewardEnv
from torch import Tensor, nn

from agents import TRPO
from agents.common.observations import ImageEncoder, ObservationEncoder
from agents.common.policies import EncodedNetwork, OldPolicy, mean_kl, policy_params
from trustregion import StepProblem

TINY = {"n_steps": 32, "hidden_sizes": (8,), "num_envs": 2}


def mlp(inputs: int, outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 8), nn.Tanh(), nn.Linear(8, outputs))


def layer_norm_mlp(inputs: int, outputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, outputs))


def optimized(optimizer: torch.optim.Optimizer) -> list[int]:
    return [id(p) for group in optimizer.param_groups for p in group["params"]]


def snapshot(module: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def all_moved(module: nn.Module, before: list[Tensor]) -> bool:
    return all(not torch.equal(p, b) for p, b in zip(module.parameters(), before, strict=True))


def one_line(info: pytest.ExceptionInfo) -> bool:
    return "\n" not in str(info.value)


# ------------------------------------------------------------------ user networks
def test_module_networks_are_the_ones_trained():
    actor, critic = mlp(3, 3), mlp(3, 1)
    agent = TRPO("tests/Random-discrete-v0", seed=0, actor=actor, critic=critic, **TINY)
    assert agent.actor.net is actor and agent.critic.net is critic
    assert optimized(agent.policy_optimizer) == [id(p) for p in actor.parameters()]
    assert optimized(agent.value_optimizer) == [id(p) for p in critic.parameters()]
    assert agent.config.custom == ("actor", "critic")
    before = (snapshot(actor), snapshot(critic))
    agent.learn(3 * agent.config.batch_size)
    assert all_moved(actor, before[0]) and all_moved(critic, before[1])
    assert all(np.isfinite(row["policy_loss"]) and np.isfinite(row["value_loss"]) for row in agent.history)
    agent.close()


def test_builders_get_the_network_spaces_and_their_modules_are_trained():
    seen = []

    def build_actor(observation_space: gym.Space, action_space: gym.Space) -> nn.Module:
        seen.append((observation_space, action_space))
        return mlp(observation_space.shape[0], action_space.shape[0])

    agent = TRPO("tests/Random-box-v0", seed=0, actor=build_actor, critic=lambda o, a: mlp(o.shape[0], 1), **TINY)
    assert seen == [(spaces.Box(-np.inf, np.inf, (3,), np.float32), spaces.Box(-1.0, 1.0, (2,), np.float32))]
    net = agent.actor.net
    assert optimized(agent.policy_optimizer) == [id(agent.actor.log_std)] + [id(p) for p in net.parameters()]
    before = snapshot(net)
    agent.learn(2 * agent.config.batch_size)
    assert all_moved(net, before)
    agent.close()


def test_a_run_with_user_networks_loads_with_them_and_continues_bit_identically(tmp_path):
    options = {"seed": 3, "actor": lambda o, a: mlp(3, 3), "critic": lambda o, a: mlp(3, 1), **TINY}
    straight = TRPO("tests/Random-discrete-v0", **options).learn(3 * 64)
    TRPO("tests/Random-discrete-v0", **options).learn(2 * 64, run_dir=tmp_path).close()
    with pytest.raises(ValueError, match=r"Python objects.*\bTRPO\.load\(.*, actor=\.\.\., critic=\.\.\.\)$") as info:
        TRPO.load(tmp_path)
    assert one_line(info)
    resumed = TRPO.load(tmp_path, actor=options["actor"], critic=options["critic"]).learn(64)
    for first, second in ((resumed.actor, straight.actor), (resumed.critic, straight.critic)):
        assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True))
    resumed.close()
    straight.close()


def dense_kl_hessian(agent: TRPO, old: OldPolicy) -> Tensor:
    """``∇²_θ mean KL(π_old || π_θ)`` at ``θ_old`` over the actor's flat parameters, by autograd's dense Hessian."""
    actor = agent.actor
    names = [name for name, _ in actor.named_parameters()]
    shapes = [p.shape for p in actor.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in actor.parameters()])

    def kl(flat: Tensor) -> Tensor:
        tensors = [
            part.reshape(shape) for part, shape in zip(flat.split([s.numel() for s in shapes]), shapes, strict=True)
        ]
        new = torch.func.functional_call(actor, dict(zip(names, tensors, strict=True)), (old.obs,))
        return actor.kl(old.params, new).mean()

    return torch.autograd.functional.hessian(kl, theta)


def gauss_newton_dense(agent: TRPO, old: OldPolicy) -> Tensor:
    """The agent's policy-step curvature on ``old``, dense, without its damping."""
    params = list(agent.actor.parameters())
    distribution = policy_params(agent.actor, old.obs, None)
    loss = -agent.actor.log_prob(distribution, old.actions).mean()
    kl = mean_kl(agent.actor, old, distribution, old.log_prob, "analytic")
    gradient = torch.autograd.grad(loss, params, retain_graph=True)
    problem = StepProblem(params, loss, kl, gradient, lambda: (loss, kl))
    dense = agent.policy_curvature(old, old).build(problem).dense(torch.float64)
    return dense - agent.config.cg_damping * torch.eye(len(dense), dtype=torch.float64)


@pytest.mark.parametrize("env", ["tests/Random-discrete-v0", "tests/Random-box-v0"])
@pytest.mark.parametrize(
    ("network", "layerwise"), [(mlp, True), (layer_norm_mlp, False)], ids=["tanh-mlp", "layer-norm"]
)
def test_user_actor_path_and_its_gauss_newton_is_the_kl_hessian(env, network, layerwise):
    width = {"tests/Random-discrete-v0": 3, "tests/Random-box-v0": 2}[env]
    agent = TRPO(env, seed=2, dtype="float64", actor=network(3, width), **TINY)
    assert agent.gauss_newton.layerwise == layerwise
    batch = agent.rollout_batch()
    old = OldPolicy.of(agent.actor, batch.obs[:24], batch.actions[:24])
    reference = dense_kl_hessian(agent, old)
    assert reference.abs().max() > 1e-3
    torch.testing.assert_close(gauss_newton_dense(agent, old), reference, rtol=1e-8, atol=1e-10)
    agent.close()


def test_kfac_with_an_actor_it_cannot_read_is_refused_before_any_step():
    with pytest.raises(ValueError, match=r"^preconditioner='kfac' needs an actor of nn.Linear layers.*'none'") as info:
        TRPO("tests/Random-box-v0", actor=layer_norm_mlp(3, 2), preconditioner="kfac", **TINY)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, ("kfac", 5)),
        ({"actor": "layer-norm"}, ("none", 25)),
        ({"actor": "tanh-mlp"}, ("none", 25)),
        ({"curvature": "kl-hessian"}, ("none", 25)),
        ({"actor": "layer-norm", "cg_iters": 12}, ("none", 12)),
        ({"actor": "tanh-mlp", "preconditioner": "kfac"}, ("kfac", 5)),
        ({"actor": "layer-norm", "preconditioner": "jacobi"}, ("jacobi", 5)),
    ],
)
def test_the_mujoco_kfac_default_gives_way_where_it_cannot_apply(given, expected):
    """K-FAC with 5 CG iterations is HalfCheetah's default; a user's actor or the KL-Hessian gets 25 plain ones."""
    networks = {"layer-norm": layer_norm_mlp, "tanh-mlp": mlp}
    options = {name: networks[value](17, 6) if name == "actor" else value for name, value in given.items()}
    agent = TRPO("HalfCheetah-v5", num_envs=1, n_steps=16, **options)
    assert (agent.config.preconditioner, agent.config.cg_iters) == expected
    agent.close()


class ClosingRandomEnv(RandomRewardEnv):
    """Records that it was closed."""

    closed_count = 0

    def close(self):
        ClosingRandomEnv.closed_count += 1


@pytest.mark.parametrize(
    ("networks", "match"),
    [
        ({"actor": mlp(3, 5)}, r"^actor returned \(2, 5\) for a batch of 2; it must return \(2, 3\)"),
        ({"actor": lambda o, a: mlp(4, 3)}, r"^actor failed on a batch of observations of shape \(2, 3\)"),
        ({"critic": mlp(3, 2)}, r"^critic returned \(2, 2\) for a batch of 2; it must return \(2,\)"),
        ({"critic": lambda o, a: 7}, r"^critic: the builder returned int; return an nn.Module"),
        ({"actor": 5}, r"^actor must be an nn.Module or a builder"),
        ({"critic": lambda o, a: nn.Flatten(0)}, r"^critic returned \(6,\) for a batch of 2; it must return \(2,\)"),
    ],
    ids=["actor-width", "actor-raises", "critic-width", "builder-not-module", "not-callable", "critic-flat"],
)
def test_bad_networks_are_refused_before_training_naming_them(networks, match):
    ClosingRandomEnv.closed_count = 0
    with pytest.raises(ValueError, match=match) as info:
        TRPO(ClosingRandomEnv, seed=0, **networks, **TINY)
    assert one_line(info)
    assert ClosingRandomEnv.closed_count == 2  # the environments built so far are closed again


# ------------------------------------------------------------------ image observations
IMAGE_ENVS = {
    "hwc-uint8": lambda: ImageEnv((10, 10, 3), "uint8"),
    "chw-uint8": lambda: ImageEnv((3, 12, 12), "uint8"),
    "hwc-bool": lambda: ImageEnv((10, 10, 4), "bool"),
}


@pytest.mark.parametrize("name", list(IMAGE_ENVS))
def test_image_observations_are_stored_raw_and_encoded_by_the_small_cnn(name):
    seen: list = []
    env = IMAGE_ENVS[name]
    space = env().observation_space
    options = {**TINY, "num_envs": 1}
    agent = TRPO(env, seed=0, wrappers=[lambda e: ObservationRecorder(e, seen)], **options)
    layout = agent.layout
    assert layout.image and not layout.flatten and layout.shape == space.shape
    assert layout.image_scale == (1 / 255 if space.dtype == np.uint8 else 1.0)
    rollout = agent.collector.collect(agent.actor, agent.rollout_networks())
    assert rollout.obs.dtype == space.dtype and rollout.obs.shape == (32, 1, *space.shape)
    np.testing.assert_array_equal(rollout.obs[:, 0], np.stack(seen[:32]))  # raw pixels, not scaled
    for net in (agent.actor.net, agent.critic.net):
        assert isinstance(net, EncodedNetwork)
        (encoder,) = net.encoder.images
        assert encoder.features == 128 and encoder.convolutions[0].out_channels == 16
        assert encoder.convolutions[0].in_channels == min(space.shape)
    agent.close()


@pytest.mark.parametrize("name", list(IMAGE_ENVS))
def test_image_agents_train_and_predict_on_raw_images(name):
    agent = TRPO(IMAGE_ENVS[name], seed=0, **TINY)
    before = snapshot(agent.actor)
    agent.learn(2 * agent.config.batch_size)
    assert all(np.isfinite(row["policy_loss"]) and np.isfinite(row["value_loss"]) for row in agent.history)
    assert not all(torch.equal(a, b) for a, b in zip(agent.actor.parameters(), before, strict=True))
    env = IMAGE_ENVS[name]()
    images = np.stack([env.reset(seed=seed)[0] for seed in range(6)])
    with torch.no_grad():
        expected = agent.actor(torch.from_numpy(images)).argmax(-1).numpy()
    np.testing.assert_array_equal(agent.act(images), expected)
    assert np.ndim(agent.act(images[0])) == 0 and agent.act(images[0]) == expected[0]
    action, _ = agent.predict(images, deterministic=False)
    assert action.shape == (6,) and set(action.tolist()) <= {0, 1}
    agent.close()


@pytest.mark.parametrize("shape", [(84, 84, 4), (4, 84, 84)])
def test_atari_size_frames_get_the_nature_encoder(shape):
    encoder = ImageEncoder(shape, 1 / 255)
    convolutions = [m for m in encoder.convolutions if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convolutions] == [
        (32, (8, 8), (4, 4)),
        (64, (4, 4), (2, 2)),
        (64, (3, 3), (1, 1)),
    ]
    assert convolutions[0].in_channels == 4
    assert encoder.features == 512 and encoder.linear.in_features == 64 * 7 * 7
    frames = torch.randint(0, 256, (2, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert encoder(frames).shape == (2, 512)


def test_hwc_and_chw_images_give_the_same_features_with_the_same_weights():
    torch.manual_seed(0)
    hwc, chw = ImageEncoder((10, 10, 3), 1 / 255), ImageEncoder((3, 10, 10), 1 / 255)
    chw.load_state_dict(hwc.state_dict())
    images = torch.randint(0, 256, (5, 10, 10, 3), dtype=torch.uint8)
    features = hwc(images)
    assert features.abs().max() > 0
    torch.testing.assert_close(chw(images.permute(0, 3, 1, 2)), features, rtol=0, atol=0)


def test_pixels_are_scaled_by_1_over_255_once():
    torch.manual_seed(0)
    encoder = ImageEncoder((10, 10, 3), 1 / 255).double()
    unscaled = copy.deepcopy(encoder)
    unscaled.scale = 1.0
    images = torch.randint(0, 256, (4, 10, 10, 3), dtype=torch.uint8)
    features = encoder(images)
    torch.testing.assert_close(features, unscaled(images.double() / 255))
    assert not torch.allclose(features, unscaled(images.double() / 255**2))
    assert not torch.allclose(features, unscaled(images.double()))


def test_a_dict_of_an_image_and_a_box_gets_one_image_encoder_and_the_box_entries():
    agent = TRPO(ImageDictEnv, seed=0, normalize_obs=True, **TINY)
    layout, space = agent.layout, ImageDictEnv().observation_space
    assert not layout.image and layout.shape == (spaces.flatdim(space),) == (303,)
    (part,) = layout.images
    assert (part.start, part.shape, part.size) == (0, (10, 10, 3), 300)
    np.testing.assert_array_equal(np.flatnonzero(layout.box_entries), [300, 301, 302])
    encoder = agent.actor.net.encoder
    assert isinstance(encoder, ObservationEncoder) and len(encoder.images) == 1
    assert encoder.features == 128 + 3
    obs = torch.from_numpy(agent.collector.collect(agent.actor, agent.rollout_networks()).obs.reshape(-1, 303))
    assert obs[:, :300].max() > 1 and torch.equal(obs[:, :300], obs[:, :300].round())  # raw pixels
    expected = torch.cat([encoder.images[0](obs[:, :300].reshape(-1, 10, 10, 3)), obs[:, 300:]], 1)
    torch.testing.assert_close(encoder(obs), expected, rtol=0, atol=0)
    agent.learn(2 * agent.config.batch_size)
    assert all(np.isfinite(row["policy_loss"]) and np.isfinite(row["value_loss"]) for row in agent.history)
    env = ImageDictEnv()
    observations = [env.reset(seed=seed)[0] for seed in range(4)]
    batch = {key: np.stack([o[key] for o in observations]) for key in observations[0]}
    flat = np.stack([spaces.flatten(space, o) for o in observations])
    with torch.no_grad():
        expected_actions = agent.actor(torch.from_numpy(agent.normalize_observation(flat))).argmax(-1).numpy()
    np.testing.assert_array_equal(agent.act(batch), expected_actions)
    assert [agent.act(o) for o in observations] == expected_actions.tolist()
    agent.close()


# ------------------------------------------------------------------ device
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_refused_naming_device():
    with pytest.raises(ValueError, match=r"^device='cuda' but torch sees no CUDA device") as info:
        TRPO("tests/Random-discrete-v0", device="cuda", **TINY)
    assert one_line(info)


@pytest.mark.parametrize(("device", "match"), [("bogus", "is not a torch device"), ("meta", "run on 'cpu' or 'cuda'")])
def test_a_device_that_is_not_one_is_refused(device, match):
    with pytest.raises(ValueError, match=rf"^device={device!r}.*{match}") as info:
        TRPO("tests/Random-discrete-v0", device=device, **TINY)
    assert one_line(info)


def test_a_torch_device_is_accepted_and_stored_as_its_name(tmp_path):
    agent = TRPO("tests/Random-discrete-v0", seed=0, device=torch.device("cpu"), **TINY)
    assert agent.config.device == "cpu" and agent.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in [*agent.actor.parameters(), *agent.critic.parameters()])
    agent.learn(agent.config.batch_size, run_dir=tmp_path)
    agent.close()
    loaded = TRPO.load(tmp_path, device=torch.device("cpu"))
    assert loaded.config.device == "cpu"
    loaded.close()
