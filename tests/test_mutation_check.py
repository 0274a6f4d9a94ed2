"""The mutants of ``tests/mutation_check.py`` still apply: each one's text is in its file exactly once.

A refactor that changes the mutated line would otherwise turn the mutant into a silent "n/a".
"""

import pytest
from project_files import PROJECT_ROOT, load_script

mutation_check = load_script("tests/mutation_check.py")


@pytest.mark.parametrize("mutant", mutation_check.MUTANTS, ids=lambda mutant: mutant.name)
def test_each_mutant_still_finds_its_text_exactly_once(mutant):
    package = "" if mutant.path.startswith("agents/") else "trustregion"
    source = (PROJECT_ROOT / package / mutant.path).read_text()
    assert source.count(mutant.original) == 1, f"{mutant.name}: update its original text in tests/mutation_check.py"
    assert mutant.mutated != mutant.original
