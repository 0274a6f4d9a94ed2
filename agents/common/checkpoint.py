"""Checkpoints: one schema built from the stateful parts, and atomic writes.

An agent names its stateful parts once (:class:`Stateful`: anything with ``state_dict`` /
``load_state_dict``); :func:`parts_state` saves them all and :func:`load_parts` restores them
all from that one mapping, refusing a checkpoint whose parts differ. Files are written
atomically: a crash mid-write never leaves a truncated checkpoint or log.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch


class Stateful(Protocol):
    """A part of a checkpoint: ``torch.nn.Module``, ``torch.optim.Optimizer`` and the agents' own parts."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], /) -> Any: ...


class GeneratorState:
    """A ``torch.Generator`` as a checkpoint part (it has ``get_state`` / ``set_state`` instead)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["state"])


def parts_state(parts: Mapping[str, Stateful]) -> dict[str, Any]:
    """``{name: part.state_dict()}`` for every part."""
    return {name: part.state_dict() for name, part in parts.items()}


def load_parts(parts: Mapping[str, Stateful], states: Mapping[str, Any]) -> None:
    """Restore every part from :func:`parts_state`'s output; a missing or unknown part is a ``ValueError``."""
    missing, unknown = sorted(set(parts) - set(states)), sorted(set(states) - set(parts))
    if missing or unknown:
        raise ValueError(f"checkpoint parts do not match this agent: missing {missing}, unknown {unknown}")
    for name, part in parts.items():
        part.load_state_dict(states[name])


def check_format(state: Mapping[str, Any], expected: int, source: object = "checkpoint") -> None:
    """A one-line ``ValueError`` unless ``state["format"]`` is ``expected``."""
    found = state.get("format") if isinstance(state, Mapping) else None
    if found != expected:
        raise ValueError(
            f"{source} has checkpoint format {found!r}, this version reads format {expected}; "
            "load it with the version that wrote it, or train a new run"
        )


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file in the same directory, fsync it, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, 0o644)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """``torch.save`` into memory, then :func:`atomic_write_bytes`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (it holds numpy arrays, so not weights-only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=False)


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
