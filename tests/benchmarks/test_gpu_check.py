"""``benchmarks/gpu_check.py``: it says "skipped" without CUDA, and its comparison runs (CPU against CPU)."""

import torch
from project_files import load_script


def test_gpu_check_compares_a_policy_step_and_trains(capsys):
    gpu_check = load_script("benchmarks/gpu_check.py")
    assert gpu_check.main(["--device", "cpu", "--envs", "CartPole-v1", "--steps", "512"]) == 0
    output = capsys.readouterr().out
    assert "CartPole-v1" in output and "0.00e+00" in output  # the same kernels: the same step
    if not torch.cuda.is_available():
        assert gpu_check.main([]) == 0
        assert capsys.readouterr().out.startswith("skipped")
