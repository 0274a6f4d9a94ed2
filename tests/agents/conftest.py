"""Registers the tiny hand-built environments and makes ``tiny_envs`` importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from tiny_envs import register_all  # noqa: E402

register_all()


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The agents set torch's thread count; put it back for the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
