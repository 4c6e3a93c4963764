"""Every ```python snippet in README.md runs (except those that say they are not run)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if README.exists() else []


@pytest.mark.skipif(not SNIPPETS, reason="README.md is not beside the tests")
@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs(index, capsys):
    code = SNIPPETS[index]
    if code.startswith("# not run by the tests"):
        compile(code, f"README snippet {index}", "exec")
        return
    exec(compile(code, f"README snippet {index}", "exec"), {"__name__": f"readme_{index}"})
