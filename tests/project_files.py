"""The project's scripts (``examples/``, ``benchmarks/``) loaded as modules, for the tests that check them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str, name: str | None = None) -> ModuleType:
    """Execute ``PROJECT_ROOT / relative_path`` as the module ``name`` (default: the file's stem).

    The module is registered in ``sys.modules`` (unless one of that name is there already), which
    dataclasses and pickling need to find the classes it defines.
    """
    path = PROJECT_ROOT / relative_path
    name = name or path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module
