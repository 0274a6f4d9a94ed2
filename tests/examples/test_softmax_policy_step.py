"""The README's promise: the default call takes the closed-form natural-gradient step."""

import pytest
from project_files import load_script


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_step_matches_dense_closed_form(seed, capsys):
    error = load_script("examples/softmax_policy_step.py").main(seed)
    assert error < 1e-6
    assert "accepted=True" in capsys.readouterr().out
