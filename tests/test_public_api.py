"""``import boltzflow as bf``: a small public face, documented, and light to import."""

import subprocess
import sys
from pathlib import Path

import boltzflow as bf

ROOT = Path(__file__).resolve().parent.parent


def test_public_names_resolve_and_are_documented():
    names = [n for n in bf.__all__ if n != "__version__"]
    assert 12 <= len(names) <= 18
    for name in names:
        obj = getattr(bf, name)
        doc = obj.__doc__ or ""
        assert len(doc.strip()) > 80, f"bf.{name} needs a docstring"
        assert name in dir(bf)
    api = "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    for name in names:
        module, _, attr = bf._PUBLIC[name].partition(":")
        assert f"::: {module}.{attr}" in api or f"::: {module}\n" in api, f"no API page: {name}"


def test_unknown_names_raise_attribute_error():
    try:
        bf.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("bf.no_such_name should raise AttributeError")


def test_import_boltzflow_stays_light():
    code = (
        "import sys, boltzflow; "
        "print(sorted(m for m in ('torch', 'nflows', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
