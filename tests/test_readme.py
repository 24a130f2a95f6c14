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
    lines = [
        ln for ln in code.strip().splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert len(lines) <= 15, "the example must fit in 15 lines of code"
    assert "import boltzflow as bf" in code  # it shows the public face


def test_readme_example_prints_what_it_promises(capsys):
    """Run as written (the default dtype, float32, as in a fresh interpreter): the ESS fraction
    is at least 0.5, log Z lies within 3 standard errors of the exact value, and the printed
    lines are those numbers; the README shows the same output."""
    import torch

    assert torch.get_default_dtype() == torch.float32
    code, _ = _first_python_block()
    ns = {"__name__": "__readme__"}
    exec(compile(code, "README.md", "exec"), ns)
    out = capsys.readouterr().out
    result, target = ns["result"], ns["target"]
    assert result.ess_fraction >= 0.5 and result.pareto_k < 0.7
    z = (result.log_z.mean - target.log_z) / result.log_z.stderr
    assert abs(z) <= 3.0, (result.log_z, target.log_z)
    ess = float(re.search(r"ESS fraction ([0-9.]+)", out).group(1))
    lz, se, exact = map(
        float, re.search(r"log Z = ([0-9.-]+) ± ([0-9.]+) \(exact ([0-9.-]+)\)", out).groups()
    )
    assert abs(ess - result.ess_fraction) <= 0.005 and abs(lz - result.log_z.mean) <= 5e-4
    assert abs(exact - target.log_z) <= 5e-4 and abs(se - result.log_z.stderr) <= 5e-4
    # The README shows this output (to within float32 differences between machines).
    shown = re.search(r"It prints.*?```text\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert shown, "the README does not show the example's output"
    s_ess = float(re.search(r"ESS fraction ([0-9.]+)", shown.group(1)).group(1))
    s_lz = float(re.search(r"log Z = ([0-9.-]+)", shown.group(1)).group(1))
    assert abs(s_ess - ess) <= 0.02 and abs(s_lz - lz) <= 0.003, (shown.group(1), out)


def test_readme_gives_run_and_test_commands():
    text = (ROOT / "README.md").read_text()
    assert "boltzflow run" in text
    assert "python -m pytest" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest" in ci and "torch==2.13.0" in ci
