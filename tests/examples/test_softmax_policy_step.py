"""The README's promise: the default call takes the closed-form natural-gradient step."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "softmax_policy_step.py"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_step_matches_dense_closed_form(seed, capsys):
    spec = importlib.util.spec_from_file_location("softmax_policy_step", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    error = module.main(seed)
    assert error < 1e-6
    assert "accepted=True" in capsys.readouterr().out
