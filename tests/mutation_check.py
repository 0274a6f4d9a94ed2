"""Mutation check for the trustregion tests: plant known bugs in a copy of the package, run the tests against it.

Each mutant is one textual change to one file of ``trustregion/`` or ``agents/`` (a sign flip, a dropped term,
an off-by-one). The script copies both packages, the tests and ``pyproject.toml`` into a temporary
directory, applies the mutant, runs the tests that should notice it, and prints one row per mutant:

    killed    - a test that passes on the unmodified package fails on the mutant
    survived  - every test that passes on the unmodified package still passes (the tests are too weak)
    n/a       - the text to mutate is no longer in the source (the code changed; update the mutant)

Tests that already fail on the unmodified package are deselected when judging a mutant; the run stops at the
first failure and hypothesis does not shrink (profile ``mutation``). Run from anywhere:

    python tests/mutation_check.py            # all mutants
    python tests/mutation_check.py cg_        # only mutants whose name contains "cg_"

Exit status 1 when a mutant survives. This file is not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CG_TESTS = ("tests/trustregion/solvers/test_cg.py",)
OPTIMIZER_TESTS = ("tests/trustregion/test_optimizer.py",)
FAULT_TESTS = ("tests/trustregion/test_faults.py",)
CURVATURE_TESTS = ("tests/trustregion/curvature", "tests/trustregion/test_distributions.py")
MATRIX_TESTS = ("tests/trustregion/test_matrix.py",)
CONTRACT_TESTS = ("tests/trustregion/test_optimizer_contract.py",)
SUBPROBLEM_TESTS = ("tests/trustregion/solvers/test_subproblem.py",)
PRECONDITIONER_TESTS = ("tests/trustregion/test_preconditioners.py", "tests/trustregion/test_nystrom.py")
MASK_TESTS = ("tests/agents/test_agent_masks.py",)
USER_ENV_TESTS = ("tests/agents/test_agent_user_envs.py",)
NETWORK_TESTS = ("tests/agents/test_agent_networks.py",)
DISTRIBUTED_TESTS = ("tests/agents/test_agent_distributed.py",)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # inside trustregion/, or from the project root for the agents ("agents/...")
    original: str
    mutated: str
    tests: tuple[str, ...]


MUTANTS = [
    # ------------------------------------------------------------------ preconditioners
    Mutant(
        "exact_diagonal_drops_the_input_square",
        "curvature/layerwise.py",
        "parts[step.weight] += squares.t() @ x.square()",
        "parts[step.weight] += squares.t() @ x.abs()",
        PRECONDITIONER_TESTS,
    ),
    Mutant(
        "categorical_square_root_drops_the_mean",
        "outputs.py",
        "columns = eye.unsqueeze(1) - probs.unsqueeze(0)  # (K, N, K)",
        "columns = eye.unsqueeze(1) + 0 * probs.unsqueeze(0)  # (K, N, K)",
        PRECONDITIONER_TESTS,
    ),
    Mutant(
        "kfac_input_factor_not_averaged",
        "curvature/layerwise.py",
        "x.t() @ x / x.shape[0]",
        "x.t() @ x",
        PRECONDITIONER_TESTS,
    ),
    Mutant(
        "kfac_drops_the_damping",
        "preconditioners.py",
        "return layer, (output_basis, input_basis, products + damping)",
        "return layer, (output_basis, input_basis, products + 1e-300)",
        PRECONDITIONER_TESTS,
    ),
    Mutant(
        "steihaug_preconditioned_norm_recurrence_wrong",
        "solvers/steihaug.py",
        "terms[2] = residual_dot + beta * beta * terms[2]",
        "terms[2] = residual_dot + beta * terms[2]",
        PRECONDITIONER_TESTS,
    ),
    Mutant(
        "solvers_accept_an_indefinite_preconditioner",
        "solvers/base.py",
        "return SolverReason.INDEFINITE_PRECONDITIONER if residual_dot <= 0.0 else None",
        "return None",
        PRECONDITIONER_TESTS,
    ),
    Mutant(
        "pull_back_ignores_the_solver_region_norm",
        "solvers/subproblem.py",
        "    if math.isnan(norm):\n        norm = region.norm(solve.direction, solve.curvature)",
        "    norm = region.norm(solve.direction, solve.curvature)",
        PRECONDITIONER_TESTS,
    ),
    # ------------------------------------------------------------------ solvers
    Mutant(
        "cg_residual_sign_flipped",
        "solvers/cg.py",
        "residual.sub_(step * product)",
        "residual.add_(step * product)",
        CG_TESTS,
    ),
    Mutant(
        "cg_preconditioner_dropped",
        "solvers/cg.py",
        "precondition = preconditioning(self.preconditioner, operator, rhs) or (lambda r: r)",
        "precondition = lambda r: r  # noqa: E731",
        CG_TESTS,
    ),
    Mutant(
        "cg_beta_inverted",
        "solvers/cg.py",
        "(new_residual_dot / residual_dot)",
        "(residual_dot / new_residual_dot)",
        CG_TESTS,
    ),
    Mutant(
        "cg_curvature_without_residual_term",
        "solvers/base.py",
        "curvature = gradient_dot - residual @ solution",
        "curvature = gradient_dot",
        CG_TESTS,
    ),
    Mutant(
        "cg_negative_curvature_ignored",
        "solvers/cg.py",
        "if curvature_value <= 0.0:",
        "if curvature_value < -1e300:",
        CG_TESTS,
    ),
    Mutant(
        "cg_tol_zero_never_stops",
        "solvers/cg.py",
        "if torch.linalg.vector_norm(residual).item() <= self.tol * rhs_norm:",
        "if torch.linalg.vector_norm(residual).item() < self.tol * rhs_norm:",
        MATRIX_TESTS,
    ),
    Mutant(
        "steihaug_tol_zero_never_stops",
        "solvers/steihaug.py",
        "if math.sqrt(residual_square) <= tolerance:",
        "if math.sqrt(residual_square) < tolerance:",
        MATRIX_TESTS,
    ),
    Mutant(
        "steihaug_default_cap_n",
        "solvers/steihaug.py",
        "range(self.max_iter or 10 * operator.dim)",
        "range(self.max_iter or operator.dim)",
        MATRIX_TESTS,
    ),
    Mutant(
        "solver_result_usable_ignores_gradient_dot",
        "result.py",
        "            and self.gradient_dot > 0.0\n",
        "",
        CONTRACT_TESTS,
    ),
    # ------------------------------------------------------------------ subproblem: pull-back and saddle escape
    Mutant(
        "pull_back_curvature_scaled_by_factor",
        "solvers/subproblem.py",
        "curvature=factor * factor * solve.curvature,",
        "curvature=factor * solve.curvature,",
        SUBPROBLEM_TESTS,
    ),
    Mutant(
        "pull_back_gradient_dot_scaled_by_factor_squared",
        "solvers/subproblem.py",
        "gradient_dot=factor * solve.gradient_dot,",
        "gradient_dot=factor * factor * solve.gradient_dot,",
        SUBPROBLEM_TESTS,
    ),
    Mutant(
        "saddle_escape_ignores_sign_of_gradient",
        "solvers/subproblem.py",
        "direction = probe.vector if (gradient @ probe.vector).item() >= 0 else -probe.vector",
        "direction = probe.vector",
        SUBPROBLEM_TESTS,
    ),
    Mutant(
        "ritz_threshold_zero",
        "solvers/subproblem.py",
        "if probe.value >= -math.sqrt(torch.finfo(gradient.dtype).eps) * probe.scale:",
        "if probe.value >= 0.0:",
        SUBPROBLEM_TESTS,
    ),
    Mutant(
        "ritz_threshold_eps_not_sqrt_eps",
        "solvers/subproblem.py",
        "if probe.value >= -math.sqrt(torch.finfo(gradient.dtype).eps) * probe.scale:",
        "if probe.value >= -torch.finfo(gradient.dtype).eps * probe.scale:",
        SUBPROBLEM_TESTS,
    ),
    Mutant(
        "ritz_threshold_ten_times_larger",
        "solvers/subproblem.py",
        "if probe.value >= -math.sqrt(torch.finfo(gradient.dtype).eps) * probe.scale:",
        "if probe.value >= -10 * math.sqrt(torch.finfo(gradient.dtype).eps) * probe.scale:",
        SUBPROBLEM_TESTS,
    ),
    Mutant(
        "ritz_threshold_not_relative",
        "solvers/subproblem.py",
        "if probe.value >= -math.sqrt(torch.finfo(gradient.dtype).eps) * probe.scale:",
        "if probe.value >= -math.sqrt(torch.finfo(gradient.dtype).eps):",
        SUBPROBLEM_TESTS,
    ),
    # ------------------------------------------------------------------ line searches
    Mutant(
        "backtracking_fraction_ratio_pow_k_plus_1",
        "search/backtracking.py",
        "fraction = self.ratio**backtracks",
        "fraction = self.ratio ** (backtracks + 1)",
        OPTIMIZER_TESTS,
    ),
    Mutant(
        "backtracking_kl_check_skipped",
        "search/backtracking.py",
        "if point.constraint is not None and not (math.isfinite(point.constraint) and point.constraint <= bound):",
        "if False:",
        OPTIMIZER_TESTS,
    ),
    Mutant(
        "backtracking_min_improvement_ignored",
        "search/backtracking.py",
        "required = self.min_improvement_ratio * fraction * problem.expected_improvement",
        "required = 0.0",
        CONTRACT_TESTS,
    ),
    Mutant(
        "backtracking_accepts_zero_improvement",
        "search/backtracking.py",
        "return improvement > 0.0 and improvement >= required",
        "return improvement >= 0.0 and improvement >= required",
        CONTRACT_TESTS,
    ),
    Mutant(
        "no_line_search_accepts_nonfinite",
        "search/none.py",
        "finite = math.isfinite(point.loss) and (point.constraint is None or math.isfinite(point.constraint))",
        "finite = True",
        FAULT_TESTS,
    ),
    # ------------------------------------------------------------------ the shared base and the KL optimizer
    Mutant(
        "base_restore_on_exception_forgotten",
        "_base.py",
        "        except BaseException:\n            restore(params, saved)\n            raise\n",
        "        except BaseException:\n            raise\n",
        CONTRACT_TESTS,
    ),
    Mutant(
        "base_restore_on_rejection_forgotten",
        "_base.py",
        "        if not result.accepted:\n            restore(params, saved)\n",
        "        if not result.accepted:\n            pass\n",
        CONTRACT_TESTS,
    ),
    Mutant(
        "base_zero_gradient_not_rejected",
        "_base.py",
        "if gradient_norm == 0.0 and not self._steps_at_zero_gradient():",
        "if False:",
        CONTRACT_TESTS,
    ),
    Mutant(
        "base_nonfinite_constraint_unchecked",
        "_base.py",
        "if constraint_value is not None and not math.isfinite(constraint_value):",
        "if False:",
        FAULT_TESTS,
    ),
    Mutant(
        "base_no_warning",
        "_base.py",
        "warnings.warn(message, RuntimeWarning, stacklevel=2)",
        "pass",
        FAULT_TESTS,
    ),
    Mutant(
        "optimizer_step_scale_without_factor_2",
        "optimizer.py",
        "step_scale = math.sqrt(2.0 * max_kl / solve.curvature)",
        "step_scale = math.sqrt(max_kl / solve.curvature)",
        MATRIX_TESTS,
    ),
    # ------------------------------------------------------------------ the minimizer and its radius controls
    Mutant(
        "minimizer_predicted_reduction_damping_dropped",
        "minimizer.py",
        "return solve.gradient_dot - 0.5 * (solve.curvature - shift_curvature)",
        "return solve.gradient_dot - 0.5 * solve.curvature",
        MATRIX_TESTS,
    ),
    Mutant(
        "minimizer_predicted_reduction_scaled_damping_dropped",
        "minimizer.py",
        "shift_curvature = (s * shift * s).sum().item()",
        "shift_curvature = 0.0",
        MATRIX_TESTS,
    ),
    Mutant(
        "levenberg_marquardt_scale_not_running_max",
        "control/levenberg_marquardt.py",
        "return tuple(torch.maximum(scale, torch.tensor(previous, dtype=torch.float64)).tolist())",
        "return tuple(scale.tolist())",
        MATRIX_TESTS,
    ),
    Mutant(
        "minimizer_rounding_dropped",
        "minimizer.py",
        "rounding = self._rounding(loss, params[0].dtype)",
        "rounding = 0.0",
        MATRIX_TESTS,
    ),
    Mutant(
        "improvement_ratio_rounding_dropped",
        "control/base.py",
        "return adjusted_ratio(loss_before - loss_after, predicted_reduction, rounding)",
        "return adjusted_ratio(loss_before - loss_after, predicted_reduction, 0.0)",
        MATRIX_TESTS,
    ),
    Mutant(
        "trust_radius_shrinks_by_half",
        "control/trust_radius.py",
        "radius = max(0.25 * radius, self.min_radius)",
        "radius = max(0.5 * radius, self.min_radius)",
        MATRIX_TESTS,
    ),
    Mutant(
        "trust_radius_shrinks_at_one_quarter",
        "control/trust_radius.py",
        "if ratio < 0.25:",
        "if ratio <= 0.25:",
        MATRIX_TESTS,
    ),
    Mutant(
        "trust_radius_expands_above_one_half",
        "control/trust_radius.py",
        "elif ratio > 0.75 and step_norm >= _ON_BOUNDARY * radius:",
        "elif ratio > 0.5 and step_norm >= _ON_BOUNDARY * radius:",
        MATRIX_TESTS,
    ),
    Mutant(
        "trust_radius_expands_inside",
        "control/trust_radius.py",
        "elif ratio > 0.75 and step_norm >= _ON_BOUNDARY * radius:",
        "elif ratio > 0.75:",
        MATRIX_TESTS,
    ),
    Mutant(
        "trust_radius_expands_threefold",
        "control/trust_radius.py",
        "radius = min(2.0 * radius, self.max_radius)",
        "radius = min(3.0 * radius, self.max_radius)",
        MATRIX_TESTS,
    ),
    Mutant(
        "levenberg_marquardt_square_not_cube",
        "control/levenberg_marquardt.py",
        "max(1.0 / 3.0, 1.0 - (2.0 * ratio - 1.0) ** 3)",
        "max(1.0 / 3.0, 1.0 - (2.0 * ratio - 1.0) ** 2)",
        MATRIX_TESTS,
    ),
    Mutant(
        "levenberg_marquardt_floor_one_half",
        "control/levenberg_marquardt.py",
        "max(1.0 / 3.0, 1.0 - (2.0 * ratio - 1.0) ** 3)",
        "max(1.0 / 2.0, 1.0 - (2.0 * ratio - 1.0) ** 3)",
        MATRIX_TESTS,
    ),
    Mutant(
        "levenberg_marquardt_growth_not_doubled",
        "control/levenberg_marquardt.py",
        "damping, growth = state.damping * state.growth, 2.0 * state.growth",
        "damping, growth = state.damping * state.growth, state.growth",
        MATRIX_TESTS,
    ),
    Mutant(
        "minimizer_control_state_not_kept",
        "minimizer.py",
        'self._set_control_state(self.control.after_step(state, ratio, details["step_norm"], step, predicted))',
        "pass",
        MATRIX_TESTS,
    ),
    # ------------------------------------------------------------------ curvature
    Mutant(
        "damping_dropped",
        "curvature/damping.py",
        "return self.curvature.build(problem).shifted(self.damping)",
        "return self.curvature.build(problem)",
        MATRIX_TESTS,
    ),
    Mutant(
        "kl_hessian_without_create_graph",
        "curvature/kl_hessian.py",
        "retain_graph=True, create_graph=True)",
        "retain_graph=True, create_graph=False)",
        CURVATURE_TESTS,
    ),
    Mutant(
        "gauss_newton_output_fisher_dropped",
        "curvature/gauss_newton.py",
        "transpose_product(output_fisher(tangent))",
        "transpose_product(tangent)",
        CURVATURE_TESTS,
    ),
    Mutant(
        "categorical_fisher_without_outer_product",
        "outputs.py",
        "return probs * (tangent - (probs_unscaled * tangent).sum(-1, keepdim=True))",
        "return probs * tangent",
        CURVATURE_TESTS,
    ),
    Mutant(
        "gaussian_fisher_log_std_weight_1",
        "outputs.py",
        "log_std_weight = 2.0 / rows",
        "log_std_weight = 1.0 / rows",
        CURVATURE_TESTS,
    ),
    Mutant(
        "gaussian_fisher_shared_row_weighted_per_input",
        "outputs.py",
        "rows = log_std.shape[0] if log_std.dim() == mean.dim() else 1\n        log_std_weight",
        "rows = batch if log_std.dim() == mean.dim() else 1\n        log_std_weight",
        CURVATURE_TESTS,
    ),
    # ------------------------------------------------------------------ least squares (MGH), acceptance, reuse
    Mutant(
        "lm_curvature_floor_ignored",
        "control/levenberg_marquardt.py",
        "return replace(updated, damping=min(max(updated.damping, curvature), self.max_damping))",
        "return updated",
        ("tests/trustregion/test_mgh.py",),
    ),
    Mutant(
        "noise_not_learnt",
        "minimizer.py",
        'state["noise"] = max(state.get("noise", 0.0), seen)',
        'state["noise"] = state.get("noise", 0.0)',
        ("tests/trustregion/test_mgh.py",),
    ),
    Mutant(
        "improvement_ratio_raw",
        "result.py",
        "return adjusted_ratio(self.actual_improvement, self.expected_improvement, self.rounding)",
        "return self.actual_improvement / self.expected_improvement",
        ("tests/trustregion/test_mgh.py",),
    ),
    Mutant(
        "kept_start_of_a_stale_point",
        "_base.py",
        "return closure is self.closure and all(torch.equal(p, q) for p, q in zip(params, self.params, strict=True))",
        "return closure is self.closure",
        ("tests/trustregion/test_mgh.py",),
    ),
    Mutant(
        "ftol_fires_on_one_flat_step",
        "drivers.py",
        "if self.flat_in_a_row >= 2:",
        "if self.flat_in_a_row >= 1:",
        ("tests/trustregion/test_mgh.py",),
    ),
    Mutant(
        "xtol_on_the_whole_vector",
        "drivers.py",
        "still = bool((moved.abs() <= stopping.xtol * (stopping.xtol + before.abs())).all())",
        "still = bool(moved.norm() <= stopping.xtol * (stopping.xtol + before.norm()))",
        ("tests/trustregion/test_mgh.py",),
    ),
    Mutant(
        "nonfinite_trial_ends_the_run",
        "drivers.py",
        "if step.reason.nonfinite and not math.isfinite(step.expected_improvement):",
        "if step.reason.nonfinite:",
        ("tests/trustregion/test_mgh.py",),
    ),
    Mutant(
        "least_squares_jacobian_reused_after_a_move",
        "curvature/least_squares.py",
        "if last.jacobian is not None and _same_values(last.params, params):",
        "if last.jacobian is not None:",
        CURVATURE_TESTS,
    ),
    Mutant(
        "least_squares_dense_drops_the_scale",
        "curvature/least_squares.py",
        "matrix = self._transform(self._scale * (jacobian.T @ jacobian))",
        "matrix = self._transform(jacobian.T @ jacobian)",
        CURVATURE_TESTS,
    ),
    # ------------------------------------------------------------------ masked categoricals
    Mutant(
        "masked_square_root_ignores_the_mask",
        "outputs.py",
        "    probs = _softmax(logits, mask)\n",
        "    probs = _softmax(logits, None)\n",
        ("tests/trustregion/curvature/test_masked_fisher.py",),
    ),
    Mutant(
        "with_inputs_ignores_the_given_fisher",
        "curvature/gauss_newton.py",
        "fisher = self.fisher if fisher is None else fisher",
        "fisher = self.fisher",
        ("tests/trustregion/curvature/test_masked_fisher.py",),
    ),
    Mutant(
        "learned_noise_allowance_made_absolute_below_one",
        "minimizer.py",
        "noise * abs(loss))",
        "noise * max(1.0, abs(loss)))",
        ("tests/trustregion/test_drivers.py",),
    ),
    Mutant(
        "least_squares_dense_default_is_the_damping_control",
        "drivers.py",
        "if control is None and dense and (solver is None or isinstance(solver, SecularSolver)):",
        "if False:",
        ("tests/trustregion/test_drivers.py",),
    ),
    Mutant(
        "nystrom_sketch_keeps_the_damping",
        "preconditioners.py",
        "dim=1) - shift[:, None] * sketch_basis",
        "dim=1)",
        PRECONDITIONER_TESTS,
    ),
    # ------------------------------------------------------------------ agents: data-parallel
    Mutant(
        "replicated_critic_minibatch_not_scaled_by_the_ranks",
        "agents/trpo/agent.py",
        "            minibatch *= self.world_size\n",
        "            minibatch *= 1\n",
        DISTRIBUTED_TESTS,
    ),
    Mutant(
        "gathered_reduction_keeps_this_rank_only",
        "agents/common/distributed.py",
        "return (rows.amax(dim=0) if op == dist.ReduceOp.MAX else rows.sum(dim=0)).view_as(tensor)",
        "return (rows.amax(dim=0) if op == dist.ReduceOp.MAX else rows[self.rank]).view_as(tensor)",
        DISTRIBUTED_TESTS,
    ),
    Mutant(
        "core_blocks_ignore_the_launchers_placement",
        "agents/common/distributed.py",
        "if any(peers[other][1] != usable for other in neighbours):",
        "if False:",
        DISTRIBUTED_TESTS,
    ),
    # ------------------------------------------------------------------ agents: masks, observations, encoders
    Mutant(
        "kfac_default_kept_for_a_user_actor",
        "agents/trpo/agent.py",
        'if networks.get("actor") is None and hyperparameters.get("curvature", "gauss-newton") == "gauss-newton":',
        'if hyperparameters.get("curvature", "gauss-newton") == "gauss-newton":',
        NETWORK_TESTS,
    ),
    Mutant(
        "policy_closure_drops_the_action_masks",
        "agents/trpo/agent.py",
        "params = policy_params(actor, old.obs, old.mask)",
        "params = policy_params(actor, old.obs, None)",
        MASK_TESTS,
    ),
    Mutant(
        "action_masks_ignore_the_info_mask",
        "agents/common/collector.py",
        "self.current[:] = np.where(present[:, None], given.astype(bool), True)",
        "self.current[:] = True",
        MASK_TESTS,
    ),
    Mutant(
        "box_normalisation_normalises_every_entry",
        "agents/common/envs.py",
        "self.entries = np.flatnonzero(entries)",
        "self.entries = np.arange(len(entries))",
        USER_ENV_TESTS,
    ),
    Mutant(
        "image_encoder_scales_pixels_twice",
        "agents/common/observations.py",
        "            x = x * self.scale\n",
        "            x = x * self.scale * self.scale\n",
        NETWORK_TESTS,
    ),
    # ------------------------------------------------------------------ Levenberg-Marquardt, trust-region formulation
    Mutant(
        "secular_newton_correction_sign",
        "solvers/secular.py",
        "damping = max(bounds[0], damping + correction)",
        "damping = max(bounds[0], damping - correction)",
        ("tests/trustregion/solvers/test_secular.py",),
    ),
    Mutant(
        "minimize_calls_a_function_of_the_parameters_without_them",
        "drivers.py",
        "    return lambda: loss(*params)\n",
        "    return loss\n",
        ("tests/trustregion/test_drivers.py",),
    ),
    Mutant(
        "max_damping_step_not_shortened_onto_the_region",
        "solvers/secular.py",
        "return SecularSolution(step * (radius / norm), max_damping, 1)",
        "return SecularSolution(step, max_damping, 1)",
        ("tests/trustregion/solvers/test_secular.py",),
    ),
    Mutant(
        "default_threads_count_the_machine_not_the_usable_cores",
        "agents/common/distributed.py",
        "        return sorted(os.sched_getaffinity(0))",
        "        return list(range(os.cpu_count() or 1))",
        DISTRIBUTED_TESTS,
    ),
    Mutant(
        "scaled_radius_grows_from_the_radius_not_the_step",
        "control/scaled_radius.py",
        "radius, damping = 2.0 * length, 0.5 * damping",
        "radius, damping = 2.0 * radius, 0.5 * damping",
        ("tests/trustregion/control/test_scaled_radius.py",),
    ),
]


def copy_project(destination: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", ".pytest_cache")
    shutil.copytree(PROJECT_ROOT / "trustregion", destination / "trustregion", ignore=ignore)
    shutil.copytree(PROJECT_ROOT / "agents", destination / "agents", ignore=ignore)
    shutil.copytree(PROJECT_ROOT / "tests", destination / "tests", ignore=ignore)
    shutil.copy2(PROJECT_ROOT / "pyproject.toml", destination / "pyproject.toml")
    (destination / "benchmarks").mkdir()
    for script in (PROJECT_ROOT / "benchmarks").glob("*.py"):  # problem sets some tests load (benchmarks/mgh.py)
        shutil.copy2(script, destination / "benchmarks" / script.name)


def failing_tests(
    workdir: Path, tests: tuple[str, ...], report: Path, *, deselect: set[str] = frozenset(), first_only: bool = False
) -> set[str]:
    """Run ``tests`` in ``workdir`` (its ``trustregion`` first on the path); return the ids that failed.

    ``deselect`` takes node ids (``path::name``); ``first_only`` stops at the first failure.
    """
    environment = {
        **os.environ,
        "PYTHONPATH": str(workdir),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HYPOTHESIS_PROFILE": "mutation",
    }
    command = [sys.executable, "-m", "pytest", *tests, "-q", "-n", "2", "-p", "no:cacheprovider"]
    command += [f"--junit-xml={report}", "-o", "addopts="]
    command += [f"--deselect={node}" for node in sorted(deselect)]
    command += ["-x"] if first_only else []
    report.unlink(missing_ok=True)
    subprocess.run(command, cwd=workdir, env=environment, capture_output=True, text=True, check=False)
    if not report.exists():
        return {"<pytest did not run>"}
    failed = set()
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            module_path = case.get("classname", "").replace(".", "/") + ".py"
            failed.add(f"{module_path}::{case.get('name')}")
    return failed


def imported_package(workdir: Path) -> str:
    environment = {**os.environ, "PYTHONPATH": str(workdir)}
    probe = [sys.executable, "-c", "import agents, trustregion; print(trustregion.__file__, agents.__file__)"]
    return subprocess.run(probe, cwd=workdir, env=environment, capture_output=True, text=True, check=True).stdout


def main(selection: str = "") -> int:
    mutants = [m for m in MUTANTS if selection in m.name]
    with tempfile.TemporaryDirectory(prefix="trustregion-mutants-") as scratch:
        workdir = Path(scratch) / "project"
        copy_project(workdir)
        if imported_package(workdir).count(str(workdir)) != 2:
            raise RuntimeError("the copied package is not the one the tests import; check the editable install")
        baselines: dict[tuple[str, ...], set[str]] = {}
        rows = []
        for mutant in mutants:
            if mutant.tests not in baselines:
                baselines[mutant.tests] = failing_tests(workdir, mutant.tests, Path(scratch) / "baseline.xml")
            package = "" if mutant.path.startswith("agents/") else "trustregion"
            target = workdir / package / mutant.path
            source = target.read_text()
            if source.count(mutant.original) != 1:
                rows.append((mutant.name, "n/a", 0.0, "text to mutate not found exactly once"))
                continue
            started = time.perf_counter()
            target.write_text(source.replace(mutant.original, mutant.mutated))
            try:
                baseline = baselines[mutant.tests]
                report = Path(scratch) / "mutant.xml"
                failed = failing_tests(workdir, mutant.tests, report, deselect=baseline, first_only=True)
            finally:
                target.write_text(source)
            new_failures = sorted(failed - baseline)
            status = "killed" if new_failures else "survived"
            detail = f"first failure: {new_failures[0]}" if new_failures else ""
            rows.append((mutant.name, status, time.perf_counter() - started, detail))
            print(f"{mutant.name:<45} {status:<9} {rows[-1][2]:6.1f}s  {detail}", flush=True)
    print()
    print(f"| {'mutant':<45} | {'result':<8} | {'time':>6} |")
    print(f"|{'-' * 47}|{'-' * 10}|{'-' * 8}|")
    for name, status, seconds, _ in rows:
        print(f"| {name:<45} | {status:<8} | {seconds:5.1f}s |")
    baseline_failures = sorted(set().union(*baselines.values())) if baselines else []
    if baseline_failures:
        print("\ntests failing on the unmodified package (ignored when judging mutants):")
        for test in baseline_failures:
            print(f"  {test}")
    return 1 if any(status != "killed" for _, status, _, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
