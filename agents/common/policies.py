"""Actor and critic networks; one actor class per action-space family.

The actor maps observations to the parameters ``z`` of its action distribution (logits, or
``(mean, log_std)``), which is exactly what :class:`trustregion.GaussNewton` linearises; the
matching :class:`trustregion.OutputFisher` comes from :meth:`Actor.output_fisher`. Actor and
critic are separate modules: no layer, and so no parameter, is shared.
"""

from __future__ import annotations

import abc
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.common.observations import ObservationEncoder, ObservationLayout, needs_encoder
from trustregion import (
    BernoulliFisher,
    CategoricalFisher,
    DiagonalGaussianFisher,
    MultiCategoricalFisher,
    OutputFisher,
)

DistributionParams = Tensor | tuple[Tensor, Tensor]
ObservationInput = int | ObservationLayout
"""What the built-in networks are built for: the flat observation size, or an observation layout (images too)."""
_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class MLP(nn.Module):
    """A fully connected network; ``forward`` calls ``F.linear`` directly (no per-layer module call)."""

    def __init__(
        self, in_dim: int, hidden_sizes: Sequence[int], out_dim: int, activation: str, output_gain: float
    ) -> None:
        super().__init__()
        sizes = [in_dim, *hidden_sizes, out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.activation = _ACTIVATIONS[activation]
        for layer in self.layers[:-1]:
            nn.init.orthogonal_(layer.weight, math.sqrt(2))
            nn.init.zeros_(layer.bias)
        nn.init.orthogonal_(self.layers[-1].weight, output_gain)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        *hidden, last = self.layers
        for layer in hidden:
            x = self.activation(F.linear(x, layer.weight, layer.bias))
        return F.linear(x, last.weight, last.bias)


class EncodedNetwork(nn.Module):
    """An :class:`~agents.common.observations.ObservationEncoder` (images to features) followed by an :class:`MLP`."""

    def __init__(self, encoder: ObservationEncoder, head: MLP) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, obs: Tensor) -> Tensor:
        return self.head(self.encoder(obs))


def policy_network(
    obs: ObservationInput, hidden_sizes: Sequence[int], out_dim: int, activation: str, output_gain: float
) -> nn.Module:
    """The built-in network for an observation: an :class:`MLP`, after an encoder when there are images."""
    if isinstance(obs, ObservationLayout) and needs_encoder(obs):
        encoder = ObservationEncoder(obs)
        return EncodedNetwork(encoder, MLP(encoder.features, hidden_sizes, out_dim, activation, output_gain))
    in_dim = obs.dim if isinstance(obs, ObservationLayout) else obs
    return MLP(in_dim, hidden_sizes, out_dim, activation, output_gain)


class RolloutNetworks:
    """A frozen numpy copy of the actor and critic networks, evaluated together for rollouts.

    A forward pass on a handful of observations is dominated by per-operation overhead, which is
    several times smaller in numpy than in torch, and halves again when the two networks run as
    one: the first layers are stacked side by side and the later ones placed block-diagonally,
    so the actor's outputs never mix with the critic's (the blocks off the diagonal are exact
    zeros). The copy is rebuilt from the torch modules at every rollout; the training networks
    stay two separate modules with separate parameters.

    ``networks(obs)`` returns ``(actor_outputs, values)``.
    """

    def __init__(self, actor: MLP, critic: MLP) -> None:
        if len(actor.layers) != len(critic.layers) or actor.activation is not critic.activation:
            raise ValueError("actor and critic networks need the same depth and activation to be evaluated together")
        actor_layers = [_numpy_layer(layer) for layer in actor.layers]
        critic_layers = [_numpy_layer(layer) for layer in critic.layers]
        (actor_weight, actor_bias), (critic_weight, critic_bias) = actor_layers[0], critic_layers[0]
        self.weights = [np.concatenate([actor_weight, critic_weight], axis=1)]
        self.biases = [np.concatenate([actor_bias, critic_bias])]
        for (actor_weight, actor_bias), (critic_weight, critic_bias) in zip(
            actor_layers[1:], critic_layers[1:], strict=True
        ):
            self.weights.append(_block_diagonal(actor_weight, critic_weight))
            self.biases.append(np.concatenate([actor_bias, critic_bias]))
        self.activation = np.tanh if actor.activation is torch.tanh else _numpy_relu

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = obs
        for weight, bias in zip(self.weights[:-1], self.biases[:-1], strict=True):
            x = self.activation(x @ weight + bias)
        out = x @ self.weights[-1] + self.biases[-1]
        return out[:, :-1], out[:, -1]


def _numpy_layer(layer: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    return layer.weight.detach().cpu().numpy().T, layer.bias.detach().cpu().numpy()


def _block_diagonal(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    block = np.zeros((first.shape[0] + second.shape[0], first.shape[1] + second.shape[1]), dtype=first.dtype)
    block[: first.shape[0], : first.shape[1]] = first
    block[first.shape[0] :, first.shape[1] :] = second
    return block


def _numpy_relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


class TorchRolloutNetworks:
    """Actor and critic evaluated by torch for rollouts, on their device: any network, images, a GPU.

    ``networks(obs)`` takes the stored observations (numpy, on the CPU), moves them to the networks'
    device once, and returns ``(actor_outputs, values)`` as numpy arrays on the CPU.
    """

    def __init__(self, actor: Actor, critic: Critic) -> None:
        self.actor, self.critic = actor, critic
        self.device = next(critic.parameters()).device

    def __call__(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(obs).to(self.device)
        with torch.inference_mode():
            outputs, values = self.actor.net(x), self.critic(x)
        return outputs.cpu().numpy(), values.cpu().numpy()


def rollout_networks(actor: Actor, critic: Critic) -> RolloutNetworks | TorchRolloutNetworks:
    """The fastest rollout copy the networks allow: fused numpy for two CPU MLPs alike, else torch."""
    nets = (actor.net, critic.net)
    on_cpu = all(p.device.type == "cpu" for p in critic.parameters())
    fusable = on_cpu and all(isinstance(net, MLP) for net in nets)
    if fusable and len(nets[0].layers) == len(nets[1].layers) and nets[0].activation is nets[1].activation:
        return RolloutNetworks(*nets)
    return TorchRolloutNetworks(actor, critic)


RolloutHead = Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]
"""``(network outputs, noise, action mask or None) -> actions``: turns pre-drawn noise into samples of ``π(·|s)``."""


class Critic(nn.Module):
    """State-value network ``V(s)``; trained by Adam on its own, never by the trust-region step.

    ``net`` (optional) is a user's network mapping a batch of observations to ``[batch]`` or
    ``[batch, 1]`` values; without it the built-in network for ``obs`` is used.
    """

    def __init__(
        self, obs: ObservationInput, hidden_sizes: Sequence[int], activation: str, net: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.net = policy_network(obs, hidden_sizes, 1, activation, output_gain=1.0) if net is None else net

    def forward(self, obs: Tensor) -> Tensor:
        values = self.net(obs)
        return values.squeeze(-1) if values.dim() == 2 else values


class Actor(nn.Module, abc.ABC):
    """A stochastic policy ``π(a|s)``: network plus distribution head.

    ``forward(obs)`` returns the distribution parameters ``z``; the other methods take ``z``.
    ``kl(old, new)`` is ``KL(π_old || π_new)`` per state in closed form and is exactly ``0``
    when ``new`` equals ``old`` bit for bit.
    """

    @abc.abstractmethod
    def sample(self, params: DistributionParams, generator: torch.Generator) -> Tensor:
        """Draw one action per state with ``generator``."""

    @abc.abstractmethod
    def mode(self, params: DistributionParams) -> Tensor:
        """The most likely action (deterministic evaluation)."""

    @abc.abstractmethod
    def log_prob(self, params: DistributionParams, actions: Tensor) -> Tensor:
        """``log π(a|s)`` per state."""

    @abc.abstractmethod
    def kl(self, old: DistributionParams, new: DistributionParams) -> Tensor:
        """``KL(π_old(·|s) || π_new(·|s))`` per state, analytic."""

    @abc.abstractmethod
    def entropy(self, params: DistributionParams) -> Tensor:
        """``H(π(·|s))`` per state."""

    output_dim: int
    """The network's outputs per state (logits, or the mean of a Gaussian)."""

    @abc.abstractmethod
    def output_fisher(self, mask: Tensor | None = None) -> OutputFisher:
        """The Fisher ``M(z)`` of the distribution in its parameters, for Gauss-Newton (``mask``: forbidden actions)."""

    def mask_params(self, params: DistributionParams, mask: Tensor) -> DistributionParams:
        """The distribution with the actions ``mask`` forbids (``False``) made impossible (categorical actors only)."""
        raise ValueError(f"action masks apply to Discrete and MultiDiscrete actions, not to {type(self).__name__}")

    @abc.abstractmethod
    def rollout_noise(self, rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The noise of a whole rollout, drawn in one call: one value per network output.

        ``shape`` is ``(n_steps, num_envs, outputs)``; :meth:`rollout_head` turns ``noise[t]``
        into the actions of step ``t``. One draw per rollout instead of one per step takes a
        numpy call off every environment step.
        """

    @abc.abstractmethod
    def rollout_head(self) -> RolloutHead:
        """Numpy sampling for rollouts: ``(network outputs, noise) -> actions`` drawn from ``π(·|s)``.

        The outputs are those of ``self.net`` as computed by :class:`RolloutNetworks`, the noise a
        slice of :meth:`rollout_noise` of the same shape.
        """

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """Actions as stored in the buffer -> the form the vector environment expects."""
        return actions


def masked_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """``logits`` with the entries ``mask`` forbids set to the dtype's most negative finite value.

    Their probability is then exactly 0, their gradient 0, and every log-probability, entropy and
    KL stays finite (``0 · finite``): ``-inf`` would make the KL's ``0 · (-inf - -inf)`` a NaN.
    """
    return logits.masked_fill(~mask, torch.finfo(logits.dtype).min)


def _masked_numpy(perturbed: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    return perturbed if mask is None else np.where(mask, perturbed, -np.inf)


class _MaskableActor(Actor):
    """An actor over categories: an action mask makes the forbidden ones impossible (:func:`masked_logits`)."""

    def mask_params(self, params: DistributionParams, mask: Tensor) -> DistributionParams:
        assert isinstance(params, Tensor)
        return masked_logits(params, mask)


class CategoricalActor(_MaskableActor):
    """``Discrete(n)``: softmax over ``n`` logits; with an action mask, over the allowed ones."""

    def __init__(
        self, obs: ObservationInput, n: int, hidden_sizes: Sequence[int], activation: str, net: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.output_dim = n
        self.net = policy_network(obs, hidden_sizes, n, activation, output_gain=0.01) if net is None else net

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)

    def sample(self, params: Tensor, generator: torch.Generator) -> Tensor:
        return torch.multinomial(torch.softmax(params, -1), 1, generator=generator).squeeze(-1)

    def mode(self, params: Tensor) -> Tensor:
        return params.argmax(-1)

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        return torch.log_softmax(params, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)

    def kl(self, old: Tensor, new: Tensor) -> Tensor:
        return _categorical_kl(old, new)

    def entropy(self, params: Tensor) -> Tensor:
        log_probs = torch.log_softmax(params, -1)
        return -(log_probs.exp() * log_probs).sum(-1)

    def output_fisher(self, mask: Tensor | None = None) -> OutputFisher:
        return CategoricalFisher() if mask is None else CategoricalFisher(mask=mask)

    def rollout_noise(self, rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return rng.gumbel(size=shape)

    def rollout_head(self) -> RolloutHead:
        def sample(logits: np.ndarray, gumbel: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
            return _masked_numpy(logits + gumbel, mask).argmax(-1)  # Gumbel-max: distributed as softmax(z)

        return sample


class MultiCategoricalActor(_MaskableActor):
    """``MultiDiscrete(nvec)``: independent softmaxes over consecutive slices of the logits (and of a mask)."""

    def __init__(
        self,
        obs: ObservationInput,
        nvec: Sequence[int],
        hidden_sizes: Sequence[int],
        activation: str,
        net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.sizes = [int(n) for n in nvec]
        self.output_dim = sum(self.sizes)
        self.net = policy_network(obs, hidden_sizes, self.output_dim, activation, 0.01) if net is None else net

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)

    def _split(self, params: Tensor) -> tuple[Tensor, ...]:
        return torch.split(params, self.sizes, dim=-1)

    def sample(self, params: Tensor, generator: torch.Generator) -> Tensor:
        draws = [torch.multinomial(torch.softmax(z, -1), 1, generator=generator) for z in self._split(params)]
        return torch.cat(draws, dim=-1)

    def mode(self, params: Tensor) -> Tensor:
        return torch.stack([z.argmax(-1) for z in self._split(params)], dim=-1)

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        factors = [
            torch.log_softmax(z, -1).gather(-1, actions[..., i : i + 1]).squeeze(-1)
            for i, z in enumerate(self._split(params))
        ]
        return torch.stack(factors, dim=-1).sum(-1)

    def kl(self, old: Tensor, new: Tensor) -> Tensor:
        pairs = zip(self._split(old), self._split(new), strict=True)
        return torch.stack([_categorical_kl(a, b) for a, b in pairs], dim=-1).sum(-1)

    def entropy(self, params: Tensor) -> Tensor:
        log_probs = [torch.log_softmax(z, -1) for z in self._split(params)]
        return torch.stack([-(lp.exp() * lp).sum(-1) for lp in log_probs], dim=-1).sum(-1)

    def output_fisher(self, mask: Tensor | None = None) -> OutputFisher:
        return MultiCategoricalFisher(self.sizes) if mask is None else MultiCategoricalFisher(self.sizes, mask=mask)

    def rollout_noise(self, rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return rng.gumbel(size=shape)

    def rollout_head(self) -> RolloutHead:
        bounds = np.cumsum([0, *self.sizes])

        def sample(logits: np.ndarray, gumbel: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
            perturbed = _masked_numpy(logits + gumbel, mask)
            factors = [perturbed[:, a:b].argmax(-1) for a, b in itertools.pairwise(bounds)]
            return np.stack(factors, axis=-1)

        return sample


class BernoulliActor(Actor):
    """``MultiBinary(n)``: ``n`` independent Bernoulli variables with logits ``z``."""

    def __init__(
        self,
        obs: ObservationInput,
        shape: tuple[int, ...],
        hidden_sizes: Sequence[int],
        activation: str,
        net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.shape = shape
        self.output_dim = int(np.prod(shape))
        self.net = policy_network(obs, hidden_sizes, self.output_dim, activation, 0.01) if net is None else net

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)

    def sample(self, params: Tensor, generator: torch.Generator) -> Tensor:
        uniform = torch.rand(params.shape, generator=generator, dtype=params.dtype, device=params.device)
        return (uniform < torch.sigmoid(params)).to(torch.int64)

    def mode(self, params: Tensor) -> Tensor:
        return (params > 0).to(torch.int64)

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        ones = actions.to(params.dtype)
        return (ones * F.logsigmoid(params) + (1 - ones) * F.logsigmoid(-params)).sum(-1)

    def kl(self, old: Tensor, new: Tensor) -> Tensor:
        p_old = torch.sigmoid(old)
        on = p_old * (F.logsigmoid(old) - F.logsigmoid(new))
        off = (1 - p_old) * (F.logsigmoid(-old) - F.logsigmoid(-new))
        return (on + off).sum(-1)

    def entropy(self, params: Tensor) -> Tensor:
        p = torch.sigmoid(params)
        return -(p * F.logsigmoid(params) + (1 - p) * F.logsigmoid(-params)).sum(-1)

    def output_fisher(self, mask: Tensor | None = None) -> OutputFisher:
        return BernoulliFisher()

    def rollout_noise(self, rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return rng.logistic(size=shape)

    def rollout_head(self) -> RolloutHead:
        def sample(logits: np.ndarray, logistic: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
            return (logits + logistic > 0).astype(np.int64)  # P(z + logistic noise > 0) = sigmoid(z)

        return sample

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        return actions.astype(np.int8).reshape(actions.shape[0], *self.shape)


class GaussianActor(Actor):
    """``Box``: diagonal Gaussian ``N(μ(s), diag(σ²))`` with a state-independent ``log σ`` parameter.

    Samples are clipped to the bounds only on their way to the environment (:meth:`to_env`);
    the buffer keeps the unclipped sample, so ``log π(a|s)`` is the density of what was drawn.
    """

    def __init__(
        self,
        obs: ObservationInput,
        space: gym.spaces.Box,
        hidden_sizes: Sequence[int],
        activation: str,
        log_std_init: float,
        net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.shape = space.shape
        self.output_dim = action_dim = int(np.prod(space.shape))
        self.net = policy_network(obs, hidden_sizes, action_dim, activation, 0.01) if net is None else net
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))
        self.low = np.asarray(space.low, dtype=np.float64).reshape(-1)
        self.high = np.asarray(space.high, dtype=np.float64).reshape(-1)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(obs), self.log_std

    def sample(self, params: tuple[Tensor, Tensor], generator: torch.Generator) -> Tensor:
        mean, log_std = params
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + log_std.exp() * noise

    def mode(self, params: tuple[Tensor, Tensor]) -> Tensor:
        return params[0]

    def log_prob(self, params: tuple[Tensor, Tensor], actions: Tensor) -> Tensor:
        mean, log_std = params
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std).sum(-1) - 0.5 * math.log(2 * math.pi) * mean.shape[-1]

    def kl(self, old: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor]) -> Tensor:
        (mean_old, log_std_old), (mean_new, log_std_new) = old, new
        variance_ratio = torch.exp(2 * (log_std_old - log_std_new))
        mean_term = (mean_old - mean_new).square() * torch.exp(-2 * log_std_new)
        per_dim = (log_std_new - log_std_old) + 0.5 * (variance_ratio + mean_term - 1)
        return per_dim.sum(-1)

    def entropy(self, params: tuple[Tensor, Tensor]) -> Tensor:
        mean, log_std = params
        per_dim = log_std + 0.5 * (1 + math.log(2 * math.pi))
        return per_dim.sum(-1).expand(mean.shape[:-1])

    def output_fisher(self, mask: Tensor | None = None) -> OutputFisher:
        return DiagonalGaussianFisher()

    def rollout_noise(self, rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return rng.standard_normal(shape, dtype=dtype)

    def rollout_head(self) -> RolloutHead:
        std = self.log_std.detach().cpu().exp().numpy().copy()

        def sample(mean: np.ndarray, normal: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
            return mean + std * normal

        return sample

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        clipped = np.clip(actions, self.low, self.high).astype(actions.dtype, copy=False)
        return clipped.reshape(actions.shape[0], *self.shape)


def _categorical_kl(old_logits: Tensor, new_logits: Tensor) -> Tensor:
    old_log_probs = torch.log_softmax(old_logits, -1)
    new_log_probs = torch.log_softmax(new_logits, -1)
    return (old_log_probs.exp() * (old_log_probs - new_log_probs)).sum(-1)


@dataclass(frozen=True)
class OldPolicy:
    """``π_old`` on a batch: the states, the actions taken, and the distribution and log-probabilities there.

    Computed once per policy step, without gradients, and **copied** (a Gaussian's ``log_std`` is the
    parameter itself, which the step moves in place): the KL compares the current parameters with
    this frozen snapshot, so it is exactly 0 at ``θ_old`` while its Hessian there is the Fisher.
    """

    obs: Tensor
    actions: Tensor
    params: DistributionParams
    log_prob: Tensor
    mask: Tensor | None = None

    @classmethod
    def of(cls, actor: Actor, obs: Tensor, actions: Tensor, mask: Tensor | None = None) -> OldPolicy:
        with torch.no_grad():
            params = _frozen(policy_params(actor, obs, mask))
            return cls(obs, actions, params, actor.log_prob(params, actions), mask)

    def subset(self, index: Tensor) -> OldPolicy:
        """The same snapshot on the states ``index`` (a state-independent ``log_std`` is kept whole)."""
        params = (self.params[0][index], self.params[1]) if isinstance(self.params, tuple) else self.params[index]
        mask = None if self.mask is None else self.mask[index]
        return OldPolicy(self.obs[index], self.actions[index], params, self.log_prob[index], mask)


def policy_params(actor: Actor, obs: Tensor, mask: Tensor | None) -> DistributionParams:
    """``π_θ(·|s)``'s parameters on ``obs``, with the forbidden actions of ``mask`` (if any) made impossible."""
    params = actor(obs)
    return params if mask is None else actor.mask_params(params, mask)


def _frozen(params: DistributionParams) -> DistributionParams:
    if isinstance(params, tuple):
        return tuple(t.detach().clone() for t in params)
    return params.detach().clone()


def mean_kl(actor: Actor, old: OldPolicy, params: DistributionParams, log_prob: Tensor, estimator: str) -> Tensor:
    """``D̄_KL(π_old, π_θ)`` on ``old``'s states: the one KL estimator of the agents (docs/math.md, "Mean KL").

    ``params`` and ``log_prob`` are ``π_θ``'s distribution and log-probabilities of ``old.actions``
    there. ``estimator="analytic"`` averages the closed-form KL per state; ``"sample"`` averages
    ``(r - 1) - log r`` with ``r = π_θ(a|s) / π_old(a|s)`` over the actions taken, ``a ~ π_old``:
    unbiased (``E[r] = 1``), never negative, and exactly 0 at ``θ_old``.
    """
    if estimator == "sample":
        log_ratio = log_prob - old.log_prob
        return (torch.expm1(log_ratio) - log_ratio).mean()
    return actor.kl(old.params, params).mean()


def make_actor(
    obs: ObservationInput,
    space: gym.Space,
    hidden_sizes: Sequence[int],
    activation: str = "tanh",
    log_std_init: float = 0.0,
    net: nn.Module | None = None,
) -> Actor:
    """The actor for an action space (Discrete, MultiDiscrete, MultiBinary or Box), on ``net`` or a built-in one."""
    if isinstance(space, gym.spaces.Discrete):
        if space.start != 0:
            raise ValueError(f"unsupported action space {space}: Discrete must start at 0 (got start={space.start})")
        return CategoricalActor(obs, int(space.n), hidden_sizes, activation, net)
    if isinstance(space, gym.spaces.MultiDiscrete):
        if space.nvec.ndim != 1 or np.any(space.start != 0):
            raise ValueError(f"unsupported action space {space}: MultiDiscrete must be 1-D and start at 0")
        return MultiCategoricalActor(obs, space.nvec.tolist(), hidden_sizes, activation, net)
    if isinstance(space, gym.spaces.MultiBinary):
        shape = (space.n,) if isinstance(space.n, int) else tuple(space.shape)
        return BernoulliActor(obs, shape, hidden_sizes, activation, net)
    if isinstance(space, gym.spaces.Box):
        return GaussianActor(obs, space, hidden_sizes, activation, log_std_init, net)
    raise ValueError(
        f"unsupported action space {space}: the agents support Discrete, MultiDiscrete, MultiBinary and Box "
        "actions; for a Dict or Tuple of these, wrap the environment with a gymnasium.ActionWrapper that "
        "exposes one of them"
    )


def parameters_shared(first: nn.Module, second: nn.Module) -> bool:
    """True when the two modules hold any tensor storage in common."""
    pointers = {p.untyped_storage().data_ptr() for p in first.parameters()}
    return any(p.untyped_storage().data_ptr() in pointers for p in second.parameters())
