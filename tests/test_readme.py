"""The README's first Python block is a working example."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _first_python_block() -> tuple[str, int]:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"```python\n(.*?)```", text, re.S)
    assert m, "README has no python code block"
    line = text[: m.start()].count("\n") + 1
    return m.group(1), line


def test_readme_example_position_and_size():
    code, line = _first_python_block()
    assert line <= 40, f"the example starts on line {line}; it must be within the first ~40"
    assert len(code.strip().splitlines()) <= 25


def test_readme_example_runs(capsys):
    code, _ = _first_python_block()
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "ESS fraction" in out and "log Z" in out


def test_readme_gives_run_and_test_commands():
    text = (ROOT / "README.md").read_text()
    assert "boltzflow run" in text
    assert "python -m pytest" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest" in ci and "torch==2.13.0" in ci
