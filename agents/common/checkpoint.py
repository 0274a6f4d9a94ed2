"""Checkpoints: one schema built from the stateful parts, checksummed files, and atomic writes.

An agent names its stateful parts once (:class:`Stateful`: anything with ``state_dict`` /
``load_state_dict``); :func:`parts_state` saves them all and :func:`load_parts` restores them
all from that one mapping, refusing a checkpoint whose parts differ. Files are written
atomically: a crash mid-write never leaves a truncated checkpoint or log.

A checkpoint file is ``torch.save``'s zip archive with a SHA-256 of the archive stored in the
zip comment at its very end (so ``torch.load`` and any zip tool still read it as it is).
:func:`load_checkpoint` verifies the checksum before it unpickles anything, and refuses a file
that fails it (a flipped byte anywhere), a truncated, empty or foreign file, and a checkpoint
written before checksums, each with a one-line :class:`CheckpointError` naming the path.
"""

from __future__ import annotations

import hashlib
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


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted or read: corrupt, truncated, foreign or of another format."""


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
    """A one-line :class:`CheckpointError` (a ``ValueError``) unless ``state["format"]`` is ``expected``."""
    found = state.get("format") if isinstance(state, Mapping) else None
    if found != expected:
        raise CheckpointError(
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


_CHECKSUM_PREFIX = b"trustregion-checkpoint sha256="
_CHECKSUM_LENGTH = len(_CHECKSUM_PREFIX) + 64  # the prefix and the hex digest: the whole zip comment
_ZIP_MAGIC = b"PK\x03\x04"
_END_OF_CENTRAL_DIRECTORY = b"PK\x05\x06"
_END_RECORD_SIZE = 22  # without its comment; the last two bytes are the comment's length


def add_checksum(archive: bytes) -> bytes:
    """``torch.save``'s zip archive (no comment) with the SHA-256 of all but its last two bytes as the comment.

    The last two bytes of a zip archive without a comment are the comment's length (0): they are
    replaced by the length of the checksum comment, which follows. Every byte of the file is
    then covered: the archive by the digest, the length and the comment by their fixed values.
    """
    if archive[-_END_RECORD_SIZE:-18] != _END_OF_CENTRAL_DIRECTORY or archive[-2:] != b"\x00\x00":
        raise ValueError("not a zip archive without a comment (torch.save's format)")
    body = archive[:-2]
    comment = _CHECKSUM_PREFIX + hashlib.sha256(body).hexdigest().encode("ascii")
    return body + len(comment).to_bytes(2, "little") + comment


def verified_archive(data: bytes, path: object) -> bytes:
    """The zip archive inside a checksummed checkpoint file, or a one-line :class:`CheckpointError` naming ``path``."""
    if len(data) >= _END_RECORD_SIZE + _CHECKSUM_LENGTH and data[-_CHECKSUM_LENGTH - 2 : -64] == (
        _CHECKSUM_LENGTH.to_bytes(2, "little") + _CHECKSUM_PREFIX
    ):
        body, digest = data[: -_CHECKSUM_LENGTH - 2], data[-64:]
        if hashlib.sha256(body).hexdigest().encode("ascii") != digest:
            raise CheckpointError(
                f"{path} is corrupt: its SHA-256 does not match the checksum saved in it (the file changed after "
                "it was written); use another checkpoint or train a new run"
            )
        return body + b"\x00\x00"  # the archive as torch.save wrote it
    if not data:
        raise CheckpointError(f"{path} is empty, not a checkpoint; use another checkpoint or train a new run")
    complete_zip = data.startswith(_ZIP_MAGIC) and data[-_END_RECORD_SIZE:-18] == _END_OF_CENTRAL_DIRECTORY
    if complete_zip and b"/data.pkl" in data:  # torch.save's archive, without the checksum comment
        raise CheckpointError(
            f"{path} is a checkpoint without a checksum (format 3 or earlier, written before checkpoints were "
            "checksummed), which this version refuses; if you trust it, save it again with save_checkpoint "
            '(docs/agents.md, "Data integrity")'
        )
    if complete_zip or not data.startswith(_ZIP_MAGIC):
        raise CheckpointError(
            f"{path} is not a checkpoint (not a file written by save()); pass a checkpoint.pt or a run directory"
        )
    raise CheckpointError(
        f"{path} is truncated or damaged: it does not end with a checkpoint's checksum; use another checkpoint "
        "or train a new run"
    )


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """``torch.save`` into memory, :func:`add_checksum`, then :func:`atomic_write_bytes`."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, add_checksum(buffer.getvalue()))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, after verifying its checksum.

    It holds numpy arrays, so it is unpickled without ``weights_only``; nothing is unpickled
    before the checksum matches. A missing file is a ``FileNotFoundError``; a corrupt, truncated,
    empty, foreign or unchecksummed file, or one that does not unpickle to a mapping, is a
    one-line :class:`CheckpointError` naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    archive = verified_archive(path.read_bytes(), path)
    try:
        state = torch.load(io.BytesIO(archive), map_location="cpu", weights_only=False)
    except Exception as error:  # a verified file this version cannot unpickle (e.g. a class that moved)
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(
            f"{path} could not be read by this version ({type(error).__name__}: {first_line}); load it with the "
            "version that wrote it"
        ) from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint's mapping")
    return state


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
