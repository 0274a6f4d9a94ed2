"""Suite-wide test settings: one deterministic hypothesis profile and single-threaded torch.

Profiles (select with ``HYPOTHESIS_PROFILE``):

* ``default`` - derandomized (the same examples on every run), no deadline, bounded examples.
* ``thorough`` - the same with ten times the examples, for occasional deeper runs.
* ``mutation`` - the default without shrinking, for ``tests/mutation_check.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, Phase, settings

# pytest puts ``tests/`` on sys.path for this file, where ``tests/trustregion`` (which mirrors the package
# layout) would be imported as a namespace package when the project is installed in editable mode; the
# project root, appended last, lets ``import trustregion`` find the package itself.
PROJECT_ROOT = str(Path(__file__).resolve().parents[1])
if PROJECT_ROOT not in sys.path:
    sys.path.append(PROJECT_ROOT)

import trustregion  # noqa: E402

assert trustregion.__file__ is not None, "import trustregion resolved to a directory, not the package"

settings.register_profile(
    "default",
    derandomize=True,
    deadline=None,
    max_examples=25,
    print_blob=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=250)
# For tests/mutation_check.py: report the first failing example without shrinking it.
settings.register_profile(
    "mutation", parent=settings.get_profile("default"), phases=[Phase.explicit, Phase.reuse, Phase.generate]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The tensors in the tests are tiny; one thread per test process avoids oversubscribing the cores under xdist.
torch.set_num_threads(1)
