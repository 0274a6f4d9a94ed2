"""The built site is self-contained: every script it loads is served from the site itself."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = re.compile(r'<script[^>]*\bsrc="([^"]+)"')


def test_pages_load_mathjax_and_every_script_from_the_site(tmp_path: Path) -> None:
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)]
    subprocess.run(command, cwd=ROOT, check=True, timeout=300, capture_output=True)
    page = site / "math" / "index.html"
    sources = SCRIPT.findall(page.read_text())
    assert any(src.endswith("mathjax/tex-mml-chtml.js") for src in sources), sources
    for src in sources:
        assert "://" not in src and not src.startswith("//"), f"{src} is loaded from the network"
        assert (page.parent / src.split("?")[0]).resolve().is_file(), f"{src} is not in the site"
    fonts = site / "javascripts" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert any(fonts.glob("*.woff")), "MathJax's fonts are not in the site"
