"""The documentation site: a strict build with the tutorials executed, read in a real browser.

One build serves every test here. The docs hook (`docs/hooks/tutorials.py`) executes each
`tutorials/*.py` with `BOLTZFLOW_SMOKE=1` to render its page, so a failing cell or a failing
final assertion on the science fails the build: this is where the tutorials run. The build runs
without `-q`, because with it mkdocs does not count warnings and `--strict` lets them through.

The browser test opens the built site in headless Chromium (system packages:
`apt-get install chromium chromium-driver`, driven by selenium) and is skipped, saying so, where
no browser is installed. `BOLTZFLOW_SCREENSHOTS=DIR` keeps its screenshots in `DIR`.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = sorted((ROOT / "tutorials").glob("*.py"))
#: Pages the browser test reads: the home page, an API page and a tutorial with figures.
PAGES = {
    "home": "",
    "api-sampling": "api/sampling/",
    "tutorial-alanine": "tutorials/alanine_dipeptide_free_energy/",
    "system-alanine": "systems/alanine-dipeptide-vacuum/",
}
#: Raw maths in the visible text: a TeX delimiter, a Sphinx role, or a TeX command in dollars.
RAW_MATHS = re.compile(r"\\\(|\\\[|:math:`|:class:`|:func:`|:meth:`|\$[^$\n]*\\[A-Za-z]+[^$\n]*\$")
INSTALL = "apt-get install -y chromium chromium-driver (see docs/development.md)"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "BOLTZFLOW_DOCS_EXECUTE": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
    return out, r


def test_docs_build_strict_with_the_tutorials_executed(site):
    out, r = site
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    for path in TUTORIALS:
        page = (out / "tutorials" / path.stem / "index.html").read_text()
        assert f"<code>tutorials/{path.name}</code>" in page, f"{path.name}: no full-size command"
        assert "Traceback" not in page, f"{path.name}: an error in the rendered outputs"


def test_every_tutorial_is_a_page_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for path in TUTORIALS:
        assert f"tutorials/{path.stem}.md" in nav, f"{path.name} is not in the mkdocs nav"


def test_every_system_page_shows_the_figures_of_a_run():
    """Written by `python docs/scripts/system_figures.py NAME`; small PNGs that exist."""
    total = 0
    for page in sorted((ROOT / "docs" / "systems").glob("*.md")):
        if page.stem == "index":
            continue
        text = page.read_text()
        assert "<!-- figures:" in text, f"{page.name}: no figures (docs/scripts/system_figures.py)"
        images = re.findall(r"!\[[^\]]*\]\(\.\./(img/systems/[^)]+\.png)\)", text)
        assert images, f"{page.name}: an empty figures block"
        for image in images:
            size = (ROOT / "docs" / image).stat().st_size
            assert size < 100_000, f"{image}: {size} bytes"
            total += size
    assert total < 5_000_000, f"system figures take {total / 1e6:.1f} MB"


def test_the_raw_maths_check_finds_what_it_should():
    for raw in (r"\(p(x)\)", r":math:`\alpha`", r"$\log w = -u$", ":class:`Flow`"):
        assert RAW_MATHS.search(raw), raw
    assert not RAW_MATHS.search("log w = −u(x) − log q(x), $BOLTZFLOW_CACHE, 5 $ and 6 $")


def _browser():
    chromium = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip(f"no headless Chromium with chromedriver installed; install: {INSTALL}")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (test extras)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1500"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(driver))


@pytest.fixture(scope="module")
def served(site):
    out, r = site
    if r.returncode != 0:
        pytest.skip(
            "the site did not build (see test_docs_build_strict_with_the_tutorials_executed)"
        )

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


STATE = """
const maths = document.querySelectorAll('.arithmatex');
const imgs = [...document.querySelectorAll('article img')];
return {
  ready: document.readyState,
  maths: maths.length,
  rendered: [...maths].filter(e => e.querySelector('.katex')).length,
  errors: document.querySelectorAll('.katex-error').length,
  images: imgs.length,
  broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
  loading: imgs.filter(i => !i.complete).length,
  text: document.querySelector('article').innerText,
};
"""


def _screenshots(browser, folder: Path, name: str) -> None:
    """The top of the page, then the first display maths and the first figure, scrolled to."""
    folder.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(folder / f"{name}.png"))
    for what, selector in (("maths", "div.arithmatex"), ("figure", "article img")):
        found = browser.execute_script(
            "const e = document.querySelector(arguments[0]);"
            "if (e) { e.scrollIntoView({block: 'center'}); } return !!e;",
            selector,
        )
        if found:
            time.sleep(0.3)
            browser.save_screenshot(str(folder / f"{name}-{what}.png"))


def test_pages_show_rendered_maths_and_their_images_in_a_browser(served):
    browser = _browser()
    keep = os.environ.get("BOLTZFLOW_SCREENSHOTS")
    shots = Path(keep) if keep else None
    try:
        for name, path in PAGES.items():
            browser.get(served + path)
            deadline = time.monotonic() + 60
            while True:
                state = browser.execute_script(STATE)
                done = state["ready"] == "complete" and state["rendered"] == state["maths"]
                if (done and not state["loading"]) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            if not name.startswith("system"):
                assert state["maths"] > 0, f"{name}: no maths on the page"
            assert state["rendered"] == state["maths"], f"{name}: maths left unrendered"
            assert state["errors"] == 0, f"{name}: KaTeX could not parse some maths"
            raw = RAW_MATHS.findall(state["text"])
            assert not raw, f"{name}: raw maths or reST in the text: {raw[:5]}"
            assert not state["broken"], f"{name}: images that did not load: {state['broken']}"
            if name.startswith(("tutorial", "system")):
                assert state["images"] >= 1, f"{name}: no figure"
            if shots:
                _screenshots(browser, shots, name)
    finally:
        browser.quit()
