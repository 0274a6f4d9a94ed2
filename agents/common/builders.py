"""The agents' networks: the built-in ones, or the user's, checked against the spaces before any training.

Contract for a user's network (``TRPO(actor=..., critic=...)``), given as an ``nn.Module`` or as a
builder ``(observation_space, action_space) -> nn.Module``:

* its input is a batch of observations as the networks receive them
  (:class:`~agents.common.observations.ObservationLayout`): ``[batch, *image_shape]`` in the
  image's own dtype for an image observation, else ``[batch, dim]`` in the policy dtype, with
  ``Discrete`` / ``Dict`` / ``Tuple`` observations flattened (one-hot) and ``Box`` entries normalised
  when ``normalize_obs`` is on; ``observation_space`` describes exactly that input;
* the actor returns the parameters of its action distribution per observation: ``[batch, n]``
  logits for ``Discrete(n)``, ``[batch, sum(nvec)]`` for ``MultiDiscrete``, ``[batch, n]`` for
  ``MultiBinary(n)``, the mean ``[batch, action_dim]`` for a ``Box`` (the agent adds a
  state-independent log standard deviation);
* the critic returns one value per observation, ``[batch]`` or ``[batch, 1]``.

Networks made of ``nn.Linear`` layers and ``tanh`` / ``relu`` get the layer-wise Gauss-Newton
products; any other network the autograd path (:meth:`trustregion.GaussNewton.for_module`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from agents.common.observations import ObservationLayout

NetworkLike = nn.Module | Callable[[gym.Space, gym.Space], nn.Module]


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; a one-line ``ValueError`` for a malformed or absent device."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device={device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:0'") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch sees no CUDA device (torch.cuda.is_available() is False); "
                         "use device='cpu' or install a CUDA build of torch")  # fmt: skip
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: the agents run on 'cpu' or 'cuda'")
    return resolved


def network_observation_space(layout: ObservationLayout, env_space: gym.Space, dtype: torch.dtype) -> gym.Space:
    """The space of what the networks receive: the image space itself, or the flat vector in the policy dtype."""
    if layout.image:
        return env_space
    numpy_dtype = np.float32 if dtype == torch.float32 else np.float64
    return gym.spaces.Box(-np.inf, np.inf, layout.shape, numpy_dtype)


def user_network(given: NetworkLike | None, name: str, spaces: tuple[gym.Space, gym.Space]) -> nn.Module | None:
    """The user's ``actor`` / ``critic``: the module itself, or what its builder returns for the two spaces."""
    if given is None or isinstance(given, nn.Module):
        return given
    if not callable(given):
        raise ValueError(f"{name} must be an nn.Module or a builder (observation_space, action_space) -> nn.Module "
                         f"(got {type(given).__name__})")  # fmt: skip
    built = given(*spaces)
    if not isinstance(built, nn.Module):
        raise ValueError(f"{name}: the builder returned {type(built).__name__}; return an nn.Module")
    return built


def check_outputs(module: nn.Module, name: str, sample: torch.Tensor, expected: tuple[int, ...], meaning: str) -> None:
    """Run ``module`` on a sample batch and refuse, in one line naming ``name``, outputs of the wrong shape."""
    try:
        with torch.no_grad():
            output = module(sample)
    except Exception as error:
        message = " ".join(str(error).split())
        raise ValueError(
            f"{name} failed on a batch of observations of shape {tuple(sample.shape)} and dtype {sample.dtype}: "
            f"{type(error).__name__}: {message}"
        ) from error
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    if shape != expected and not (len(expected) == 1 and shape == (*expected, 1)):
        raise ValueError(f"{name} returned {shape} for a batch of {sample.shape[0]}; it must return {expected} "
                         f"({meaning})")  # fmt: skip


def sample_batch(layout: ObservationLayout, space: gym.Space, dtype: torch.dtype, device: torch.device) -> Any:
    """Two observations of zeros, as the networks receive them (for :func:`check_outputs` and tracing)."""
    if layout.image:
        return torch.zeros((2, *layout.shape), dtype=getattr(torch, np.dtype(space.dtype).name), device=device)
    return torch.zeros((2, *layout.shape), dtype=dtype, device=device)
