"""Observation spaces: which ones the agents take, how an observation reaches the networks, the encoders.

Every supported space becomes one array per observation, the networks' input (``ObservationLayout``):

* a ``Box`` that is an image (3 dimensions, ``uint8`` in ``[0, 255]`` as Stable-Baselines3 detects
  images, or ``bool`` grids such as MinAtar's) is kept as it is, in its own dtype, channels first or
  last; the built-in encoder converts and scales it once, inside the network;
* anything else (a ``Box`` of any shape, ``Discrete``, ``MultiDiscrete``, ``MultiBinary``, and
  ``Dict`` / ``Tuple`` of these, images included) is flattened by gymnasium's ``flatten``: a
  ``Discrete`` becomes a one-hot vector, a ``MultiDiscrete`` one one-hot block per entry, a
  ``Dict`` the concatenation of its entries in the space's key order. The layout records which
  entries came from a non-image ``Box`` (observation normalisation applies to those only) and
  where each image of a ``Dict`` / ``Tuple`` lies in the flat vector (one encoder per image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

_SUPPORTED = "Box, Discrete, MultiDiscrete, MultiBinary, and Dict or Tuple of these"
NATURE_MIN_SIDE = 36
"""The smallest image side for the Nature-DQN encoder (8×8/4, 4×4/2, 3×3/1 convolutions); smaller: the small one."""


def is_image_space(space: gym.Space) -> bool:
    """A 3-dimensional ``Box`` of ``uint8`` pixels in ``[0, 255]``, or of ``bool`` cells (a binary grid)."""
    if not isinstance(space, spaces.Box) or len(space.shape) != 3:
        return False
    if space.dtype == np.bool_:
        return True
    return space.dtype == np.uint8 and bool(np.all(space.low == 0) and np.all(space.high == 255))


def channels_first(shape: Sequence[int]) -> bool:
    """Whether an image is ``CHW``: its smallest dimension comes first (Stable-Baselines3's rule)."""
    return int(np.argmin(shape)) == 0


@dataclass(frozen=True)
class ImagePart:
    """An image inside a flat observation: entries ``[start, start + size)``, in ``shape``."""

    start: int
    shape: tuple[int, ...]
    scale: float

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ObservationLayout:
    """How one sub-environment's observation is stored and what the networks receive.

    Attributes:
        shape: one observation as the networks receive it: an image's own shape, else ``(dim,)``.
        image: the observation is one image, stored in its own dtype (``uint8`` or ``bool``).
        flatten: the environment's observations go through gymnasium's ``FlattenObservation``.
        box_entries: the entries of a flat observation that come from a non-image ``Box``:
            the ones observation normalisation applies to.
        images: the images inside a flat observation (``Dict`` / ``Tuple`` spaces).
        image_scale: what a pixel of a whole-image observation is multiplied by (1/255 or 1).
    """

    shape: tuple[int, ...]
    image: bool
    flatten: bool
    box_entries: np.ndarray
    images: tuple[ImagePart, ...] = ()
    image_scale: float = 1.0

    @property
    def dim(self) -> int:
        """Entries of one observation."""
        return math.prod(self.shape)

    @property
    def all_box(self) -> bool:
        """Every entry comes from a non-image ``Box`` (false for an image: pixels are never normalised)."""
        return self.box_entries.size > 0 and bool(self.box_entries.all())


def observation_layout(space: gym.Space, argument: str = "env") -> ObservationLayout:
    """The layout of ``space``; a one-line ``ValueError`` naming ``argument`` for a space the agents do not take."""
    check_observation_space(space, argument)
    if is_image_space(space):
        return ObservationLayout(tuple(space.shape), True, False, np.zeros(0, bool), (), _pixel_scale(space))
    flat = isinstance(space, spaces.Box) and len(space.shape) == 1
    box_entries, images = _flat_parts(space, 0)
    return ObservationLayout((len(box_entries),), False, not flat, np.asarray(box_entries, bool), tuple(images))


def check_observation_space(space: gym.Space, argument: str = "env") -> None:
    """Refuse, in one line naming ``argument``, an observation space the agents cannot encode."""
    if isinstance(space, (spaces.Dict, spaces.Tuple)):
        for part in space.spaces.values() if isinstance(space, spaces.Dict) else space.spaces:
            check_observation_space(part, argument)
        return
    if not isinstance(space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        raise ValueError(
            f"{argument}: unsupported observation space {space}; the agents take {_SUPPORTED}: wrap the "
            "environment with a gymnasium.ObservationWrapper that maps its observations into one of them"
        )


def _pixel_scale(space: spaces.Box) -> float:
    return 1.0 / 255.0 if space.dtype == np.uint8 else 1.0


def _flat_parts(space: gym.Space, start: int) -> tuple[list[bool], list[ImagePart]]:
    """Per flat entry whether it is a non-image Box entry, and the images, in ``gymnasium.spaces.flatten`` order."""
    if isinstance(space, (spaces.Dict, spaces.Tuple)):
        entries: list[bool] = []
        images: list[ImagePart] = []
        for part in space.spaces.values() if isinstance(space, spaces.Dict) else space.spaces:
            part_entries, part_images = _flat_parts(part, start + len(entries))
            entries += part_entries
            images += part_images
        return entries, images
    size = spaces.flatdim(space)
    if is_image_space(space):
        return [False] * size, [ImagePart(start, tuple(space.shape), _pixel_scale(space))]
    return [isinstance(space, spaces.Box)] * size, []


class ImageEncoder(nn.Module):
    """Pixels to features: the Nature-DQN encoder (Mnih et al., 2015) for Atari-size frames, a small one for grids.

    Frames whose smaller side is at least :data:`NATURE_MIN_SIDE` (84×84 Atari frames) get three
    convolutions (32 8×8 stride 4, 64 4×4 stride 2, 64 3×3 stride 1) and a 512-unit layer; smaller
    grids (MinAtar's 10×10) one 16-channel 3×3 convolution and a 128-unit layer, as in MinAtar's own
    baselines. The input is converted to the network's dtype and scaled once (``uint8`` by 1/255),
    and an ``HWC`` image is moved to ``CHW`` here, so rollouts store raw pixels.
    """

    def __init__(self, shape: Sequence[int], scale: float) -> None:
        super().__init__()
        self.shape, self.scale = tuple(shape), scale
        self.channels_last = not channels_first(self.shape)
        channels, height, width = _chw(self.shape)
        if min(height, width) >= NATURE_MIN_SIDE:
            convolutions: list[nn.Module] = [
                nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
                nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            ]  # fmt: skip
            self.features = 512
        else:
            convolutions = [nn.Conv2d(channels, 16, 3, stride=1), nn.ReLU()]
            self.features = 128
        self.convolutions = nn.Sequential(*convolutions, nn.Flatten())
        with torch.no_grad():
            flat = self.convolutions(torch.zeros(1, channels, height, width)).shape[1]
        self.linear = nn.Linear(flat, self.features)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.orthogonal_(module.weight, math.sqrt(2))
                nn.init.zeros_(module.bias)

    def forward(self, pixels: Tensor) -> Tensor:
        x = pixels.to(self.linear.weight.dtype)
        if self.scale != 1.0:
            x = x * self.scale
        if self.channels_last:
            x = x.movedim(-1, -3)
        return torch.relu(self.linear(self.convolutions(x)))


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if channels_first(shape):
        return shape[0], shape[1], shape[2]
    return shape[2], shape[0], shape[1]


class ObservationEncoder(nn.Module):
    """Observations to features: one :class:`ImageEncoder` per image, the other entries passed through, concatenated.

    For a whole-image observation the features are the image encoder's; for a flat observation
    with images inside (a ``Dict`` or ``Tuple`` space) each image is cut out of the flat vector,
    encoded, and concatenated with the remaining entries.
    """

    def __init__(self, layout: ObservationLayout) -> None:
        super().__init__()
        self.whole_image = layout.image
        parts = [ImagePart(0, layout.shape, layout.image_scale)] if layout.image else list(layout.images)
        self.images = nn.ModuleList(ImageEncoder(part.shape, part.scale) for part in parts)
        self.slices = [(part.start, part.start + part.size, part.shape) for part in parts]
        in_image = np.zeros(layout.dim, dtype=bool)
        for start, stop, _ in self.slices:
            in_image[start:stop] = True
        rest = np.flatnonzero(~in_image) if not layout.image else np.zeros(0, dtype=np.int64)
        self.register_buffer("rest", torch.from_numpy(rest), persistent=False)
        self.features = sum(encoder.features for encoder in self.images) + len(rest)

    def forward(self, obs: Tensor) -> Tensor:
        if self.whole_image:
            return self.images[0](obs)
        encoded = [
            encoder(obs[:, start:stop].reshape(-1, *shape))
            for encoder, (start, stop, shape) in zip(self.images, self.slices, strict=True)
        ]
        return torch.cat([*encoded, obs.index_select(1, self.rest).to(encoded[0].dtype)], dim=1)


def needs_encoder(layout: ObservationLayout) -> bool:
    """Whether the networks need an :class:`ObservationEncoder` (an image somewhere), or an MLP takes the vector."""
    return layout.image or bool(layout.images)


def network_observations(layout: ObservationLayout, space: gym.Space, observation: object) -> tuple[np.ndarray, bool]:
    """Raw observations (one, or a batch along a leading dimension) as the networks' ``[batch, *shape]`` array.

    Returns the array and whether ``observation`` was a single one; a one-line ``ValueError``
    naming ``observation`` when its shape fits neither.
    """
    leaf_space, leaf = _first_leaf(space, observation)
    one = tuple(leaf_space.shape or ())
    extra = np.ndim(leaf) - len(one)
    if extra not in (0, 1) or np.shape(leaf)[extra:] != one:
        raise ValueError(
            f"observation does not fit {space}: give one observation of it or a batch of them along a first "
            f"dimension (got an entry of shape {np.shape(leaf)} where {one} is one observation)"
        )
    single = extra == 0
    if not layout.flatten:
        array = np.asarray(observation)
        return array.reshape(-1, *layout.shape), single
    if single:
        return spaces.flatten(space, observation)[None], True
    batch = np.shape(leaf)[0]
    items = gym.vector.utils.iterate(gym.vector.utils.batch_space(space, batch), observation)
    return np.stack([spaces.flatten(space, item) for item in items]), False


def _first_leaf(space: gym.Space, observation: object) -> tuple[gym.Space, object]:
    """The first non-container space of ``space`` and the matching part of ``observation``."""
    try:
        while isinstance(space, (spaces.Dict, spaces.Tuple)):
            key = next(iter(space.spaces)) if isinstance(space, spaces.Dict) else 0
            space, observation = space.spaces[key], observation[key]  # type: ignore[index]
    except (KeyError, IndexError, TypeError) as error:
        raise ValueError(
            f"observation does not fit {space}: give a value of the environment's observation space"
        ) from error
    return space, observation
