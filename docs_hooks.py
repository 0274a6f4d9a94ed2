"""MkDocs hook: serve MathJax from the built site, so the math renders without a network.

MathJax 3 (its es5 bundle and fonts) comes from the ``sphinx-mathjax-offline`` package, a
dependency of the ``docs`` extra; after each build it is copied to ``javascripts/mathjax/``.
"""

from __future__ import annotations

import shutil
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from mkdocs.exceptions import PluginError

MATHJAX_PACKAGE = "sphinx-mathjax-offline"
TARGET = Path("javascripts") / "mathjax"


def on_post_build(config, **kwargs) -> None:
    try:
        source = Path(distribution(MATHJAX_PACKAGE).locate_file("sphinx-mathjax-offline/static/mathjax"))
    except PackageNotFoundError:
        hint = f'MathJax is served from the site: pip install -e ".[docs]" (needs {MATHJAX_PACKAGE})'
        raise PluginError(hint) from None
    shutil.copytree(source, Path(config["site_dir"]) / TARGET, dirs_exist_ok=True)
