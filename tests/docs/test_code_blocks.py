"""Every ```python block of README.md and docs/*.md runs, so the documentation cannot drift from the code.

The rule for writing a page:

* A ```python block runs in a fresh namespace, so a reader can copy it alone: it imports what it
  uses and builds its own (small) model and data.
* A block that builds on the one before it says so with the line ``<!-- continue -->`` between the
  two (blank lines around it allowed); it then runs in the namespace of the previous ```python
  block of the same page. The marker is an HTML comment, invisible on the site.
* Anything that is not Python to run is not labelled python (nor py, python3): shell commands are
  ```bash; program output, file trees and signatures are ```text.
* Keep blocks quick (small models, few steps, an agent's ``learn(2048)``): all pages together
  take well under a minute on two cores.

Each page runs in a fresh interpreter (so state such as the default dtype or a process group
cannot leak from one page to another), with its blocks in page order, a temporary directory as
the working directory, one torch thread, and at most :data:`PAGE_TIMEOUT` seconds. A traceback
names the page and the line in it.

Run one page by hand with ``python tests/docs/test_code_blocks.py docs/optimizer.md``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON_LANGUAGES = {"python", "py", "python3"}
CONTINUE = "<!-- continue -->"
PAGE_TIMEOUT = 60.0
"""Seconds one page may take, all its blocks together."""

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its source (dedented), the page line of its first source line, and its marker."""

    source: str
    line: int
    continues: bool


def python_blocks(page: Path) -> list[Block]:
    """The ```python blocks of ``page`` in order; raises ``ValueError`` on a misplaced ``<!-- continue -->``."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending_continue: int | None = None  # page line of a marker still waiting for its block
    index = 0
    while index < len(lines):
        text = lines[index]
        if text.strip() == CONTINUE:
            pending_continue = index + 1
            index += 1
            continue
        opening = _FENCE.match(text)
        if opening is None:
            if text.strip() and pending_continue is not None:
                raise ValueError(f"{page.name}:{pending_continue}: {CONTINUE} must come right before a code block")
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].strip().split(" ")[0].lower() if opening["info"].strip() else ""
        end = index + 1
        while end < len(lines) and not re.fullmatch(rf"[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*", lines[end]):
            end += 1
        if end == len(lines):
            raise ValueError(f"{page.name}:{index + 1}: code block never closed")
        body = [line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[index + 1 : end]]
        if language in PYTHON_LANGUAGES:
            continues = pending_continue is not None
            if continues and not blocks:
                raise ValueError(f"{page.name}:{pending_continue}: {CONTINUE} before the page's first python block")
            blocks.append(Block("\n".join(body) + "\n", index + 2, continues))
        elif pending_continue is not None:
            raise ValueError(f"{page.name}:{pending_continue}: {CONTINUE} before a {language or 'plain'} block")
        pending_continue = None
        index = end + 1
    if pending_continue is not None:
        raise ValueError(f"{page.name}:{pending_continue}: {CONTINUE} at the end of the page")
    return blocks


def run_page(page: Path) -> None:
    """Execute the blocks of ``page`` in this process, in order (what the test runs in a subprocess)."""
    import torch

    torch.set_num_threads(1)
    namespace: dict[str, object] = {}
    for block in python_blocks(page):
        if not block.continues:
            namespace = {"__name__": "__main__"}
        # Padding with newlines makes the line numbers of a traceback those of the page.
        code = compile("\n" * (block.line - 1) + block.source, str(page), "exec")
        exec(code, namespace)


def _relative(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("page", PAGES, ids=_relative)
def test_markers_and_fences_parse(page: Path) -> None:
    python_blocks(page)


def _has_python_blocks(page: Path) -> bool:
    try:
        return bool(python_blocks(page))
    except ValueError:  # a misplaced marker: let the run report it, and test_markers_and_fences_parse too
        return True


@pytest.mark.parametrize("page", [p for p in PAGES if _has_python_blocks(p)], ids=_relative)
def test_python_blocks_run(page: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
    }
    # A session of its own, so that a timeout also ends what the page started (e.g. async env workers).
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(page)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=PAGE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(
            f"{_relative(page)}: the python blocks took more than {PAGE_TIMEOUT:.0f} s; make them smaller",
            pytrace=False,
        )
    if process.returncode != 0:
        pytest.fail(
            f"a python block of {_relative(page)} failed (exit {process.returncode}):\n"
            f"{stderr[-6000:]}\n--- stdout ---\n{stdout[-2000:]}",
            pytrace=False,
        )


def test_the_rule_on_a_sample_page(tmp_path: Path) -> None:
    page = tmp_path / "sample.md"
    page.write_text(
        "```python\nx = 1\n```\n\n```bash\necho no\n```\n\n"
        "* a list item:\n\n    ```python\n    y = 2\n    ```\n\n<!-- continue -->\n\n````py\n```\n````\n",
        encoding="utf-8",
    )
    assert python_blocks(page) == [
        Block("x = 1\n", 2, False),
        Block("y = 2\n", 12, False),  # indented in a list: dedented, fresh namespace
        Block("```\n", 18, True),  # a longer fence holds a shorter one; the marker continues the namespace
    ]
    misplaced = [
        "<!-- continue -->\n```python\nx = 1\n```\n",  # before the first block
        "```python\nx = 1\n```\n<!-- continue -->\n",  # at the end
        "```python\nx = 1\n```\n<!-- continue -->\ntext\n```python\ny = x\n```\n",  # not right before
        "```python\nx = 1\n```\n<!-- continue -->\n```bash\necho\n```\n",  # before another language
    ]
    for text in misplaced:
        page.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match="continue"):
            python_blocks(page)


if __name__ == "__main__":  # by hand: in a temporary directory too, so a page's files never land in the tree
    import tempfile

    page_path = Path(sys.argv[1]).resolve()
    if Path.cwd().resolve() == ROOT or ROOT in Path.cwd().resolve().parents:
        os.chdir(tempfile.mkdtemp(prefix="page-"))
    run_page(page_path)
