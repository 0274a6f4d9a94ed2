"""Checkpoint files carry a SHA-256: a flipped byte, a truncated, empty or foreign file, and a file of another format
are refused by ``TRPO.load`` with a one-line error naming the path (docs/agents.md, "Data integrity").

Every corruption is drawn from a seeded generator. Refusals happen before an agent is built, so
each costs a file read and a hash.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile

import numpy as np
import pytest
import torch

from agents import TRPO
from agents.common.checkpoint import CheckpointError, add_checksum, load_checkpoint, save_checkpoint
from agents.trpo.agent import CHECKPOINT_FORMAT

SMALL = {"n_steps": 16, "num_envs": 2, "hidden_sizes": (8,), "value_epochs": 1}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The bytes of a CartPole checkpoint after one iteration, and the state it holds."""
    agent = TRPO("CartPole-v1", seed=0, **SMALL)
    agent.learn(agent.config.batch_size)
    path = tmp_path_factory.mktemp("saved") / "checkpoint.pt"
    agent.save(path)
    state = agent.state_dict()
    agent.close()
    return path.read_bytes(), state


def tensor_data(data: bytes) -> list[range]:
    """Byte ranges of the tensor storages (``archive/data/<key>``) inside the checkpoint's zip archive."""
    ranges = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if "/data/" not in info.filename:
                continue
            header = data[info.header_offset : info.header_offset + 30]  # the local file header
            name_and_extra = int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
            start = info.header_offset + 30 + name_and_extra
            ranges.append(range(start, start + info.compress_size))
    return ranges


def refused(path, *fragments):
    """``TRPO.load(path)`` raises one line naming the path and every fragment; returns the message."""
    with pytest.raises(CheckpointError) as error:
        TRPO.load(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_saved_checkpoint_loads_and_is_still_a_torch_file(checkpoint, tmp_path):
    data, state = checkpoint
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(data)
    loaded = TRPO.load(path)
    assert loaded.global_step == state["parts"]["progress"]["global_step"] > 0
    for name, tensor in loaded.actor.state_dict().items():
        assert torch.equal(tensor, state["parts"]["actor"][name])
    loaded.close()
    plain = torch.load(path, weights_only=False)  # torch.load and zip tools read the file as it is
    assert plain["format"] == CHECKPOINT_FORMAT and set(plain["parts"]) == set(state["parts"])
    comment = zipfile.ZipFile(path).comment
    assert comment == b"trustregion-checkpoint sha256=" + hashlib.sha256(data[: -2 - len(comment)]).hexdigest().encode()


def test_save_is_atomic_and_leaves_nothing_else(tmp_path):
    agent = TRPO("CartPole-v1", seed=0, **SMALL)
    agent.save(tmp_path / "checkpoint.pt")
    agent.save(tmp_path / "checkpoint.pt")  # replaced in one os.replace
    agent.close()
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["format"] == CHECKPOINT_FORMAT


def test_every_single_byte_flip_in_the_tensor_data_is_refused(checkpoint, tmp_path):
    data, _ = checkpoint
    ranges = tensor_data(data)
    assert sum(len(r) for r in ranges) > 1000  # the parameters, the Adam moments, the generators
    rng = np.random.default_rng(6)
    path = tmp_path / "checkpoint.pt"
    for _ in range(40):
        where = ranges[rng.integers(len(ranges))]
        offset = int(rng.integers(where.start, where.stop))
        damaged = bytearray(data)
        damaged[offset] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(damaged))
        refused(path, "is corrupt", "SHA-256 does not match")


def test_every_single_byte_flip_anywhere_is_refused(checkpoint, tmp_path):
    data, _ = checkpoint
    rng = np.random.default_rng(7)
    path = tmp_path / "checkpoint.pt"
    offsets = [0, 3, len(data) - 1, len(data) - 64, len(data) - 100, *rng.integers(0, len(data), 60).tolist()]
    for offset in offsets:
        damaged = bytearray(data)
        damaged[offset] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(damaged))
        message = refused(path)
        assert "corrupt" in message or "truncated or damaged" in message, message


def test_a_truncated_checkpoint_is_refused(checkpoint, tmp_path):
    data, _ = checkpoint
    rng = np.random.default_rng(8)
    path = tmp_path / "checkpoint.pt"
    for length in [1, 4, 22, len(data) // 2, len(data) - 1, len(data) - 2, *rng.integers(5, len(data), 20).tolist()]:
        path.write_bytes(data[:length])
        message = refused(path)
        assert "truncated or damaged" in message or "not a checkpoint" in message, message
    path.write_bytes(b"")
    refused(path, "is empty")


@pytest.mark.parametrize("kind", ["random", "text", "zip", "pickle"])
def test_a_garbage_file_is_refused(kind, tmp_path):
    path = tmp_path / "checkpoint.pt"
    if kind == "random":
        path.write_bytes(np.random.default_rng(9).bytes(5000))
    elif kind == "text":
        path.write_text("step,return\n1,2\n")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "not a checkpoint")
    else:
        path.write_bytes(b"\x80\x04\x95" + bytes(100))  # a pickle header
    refused(path, "not a checkpoint")


def test_a_checkpoint_without_a_checksum_is_refused_naming_the_format(checkpoint, tmp_path):
    _, state = checkpoint
    path = tmp_path / "checkpoint.pt"
    torch.save(state, path)  # how format 3 was written before checksums
    refused(path, "without a checksum", "format 3 or earlier")


def test_a_checksummed_checkpoint_of_another_format_is_refused(checkpoint, tmp_path):
    _, state = checkpoint
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {**state, "format": 2})
    refused(path, "checkpoint format 2", f"reads format {CHECKPOINT_FORMAT}")
    buffer = io.BytesIO()
    torch.save([1, 2, 3], buffer)
    path.write_bytes(add_checksum(buffer.getvalue()))
    refused(path, "holds a list")


def test_a_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        TRPO.load(tmp_path / "nothing")
