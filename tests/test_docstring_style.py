"""Docstrings are Markdown (Google style, `$...$` maths, autorefs links): no reST left.

The API pages are rendered by mkdocstrings as Markdown, where a Sphinx role such as
``:class:`Flow` `` or a ``.. math::`` directive shows up as literal text.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "boltzflow"

#: Sphinx roles (`:class:`, `:py:func:`, ...) and reST directives that Markdown does not render.
RST = re.compile(
    r":(?:py:)?(?:class|func|math|meth|attr|mod|data|obj|exc|const|ref):`"
    r"|^\s*\.\. (?:math|note|warning|code-block|seealso)::",
    re.MULTILINE,
)


def rst_markup(text: str) -> list[str]:
    """The lines of `text` that hold reST markup."""
    return [line.strip() for line in text.splitlines() if RST.search(line)]


@pytest.mark.parametrize(
    "text",
    [
        "See :class:`IndependenceMH`.",
        "Accept with :math:`\\min(1, e^{\\log\\alpha})`.",
        "Runs :py:func:`boltzflow.sampling.chains.run_chain`.",
        "Calls :meth:`step`.",
        "Block:\n\n    .. math::\n\n        M^{-1} = \\Sigma\n",
    ],
)
def test_the_check_finds_rst(text):
    assert rst_markup(text)


def test_the_check_passes_markdown():
    text = "See [`Flow`][boltzflow.flows.base.Flow], $\\log w = -u - \\log q$ and\n\n$$\nx\n$$\n"
    assert not rst_markup(text)


def test_no_sphinx_roles_in_the_package():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line in rst_markup(path.read_text(encoding="utf-8")):
            found.append(f"{path.relative_to(ROOT)}: {line}")
    assert not found, "reST markup left (write Markdown: `code`, $maths$, [name][path]):\n" + (
        "\n".join(found[:40])
    )
