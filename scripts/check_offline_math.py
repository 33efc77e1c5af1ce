"""Open built pages in headless Chromium with every outside host unreachable; check the math.

    python scripts/check_offline_math.py docs/_build/html               # `make docs-check`
    python scripts/check_offline_math.py docs/_build/html --screenshot-dir D

The site is served on 127.0.0.1; Chromium resolves no other host name
(``--host-resolver-rules``), so a page that still loads MathJax from a CDN shows raw TeX here
as it would in a classroom without network. For each page the check asserts that

1. the page loads MathJax from the site itself (``_static/mathjax/tex-chtml.js``);
2. after the scripts ran, every math element of the HTML holds one ``mjx-container`` (MathJax's
   output), as many containers as the built page has math elements;
3. no ``\\[``, ``\\]``, ``\\(`` or ``\\)`` is left in the text a reader sees (code blocks aside);
4. MathJax's own fonts are in use (its CommonHTML ``MJXZERO``/``MJX-TEX`` font faces, which
   the site serves);
5. at a 1280-pixel-wide window (a laptop) no code block and no display formula is wider than
   its box (a probe script that only this checker's server adds to the page measures
   ``scrollWidth`` against ``clientWidth`` once the page has settled).

It writes a PNG screenshot of each page (``--screenshot-dir``) to look at. Exit status 1 names
every failed check; 2 means Chromium is missing (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import functools
import html
import html.parser
import http.server
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

#: the pages checked by default: every tutorial, notebook and concept page that has math (the
#: VAE tutorial, written in reStructuredText, and its MyST notebook among them)
PAGES = ("tutorials/*.html", "notebooks/*.html", "concepts/*.html")
#: pages without math, opened too: no CDN named, no code block wider than its box, and a
#: screenshot (the landing page, the front pages of the manual, the results)
PLAIN = ("index.html", "install.html", "usage.html", "catalogue.html", "results/*.html")
DELIMITERS = ("\\[", "\\]", "\\(", "\\)")
LOCAL_MATHJAX = "_static/mathjax/tex-chtml.js"
WINDOW = "1280,1600"
#: added before </body> by the checker's server only: after MathJax has typeset (5 s of
#: virtual time), record the blocks that scroll sideways as an attribute of <body>
PROBE = b"""<script>
window.addEventListener("load", () => setTimeout(() => {
  const wide = [...document.querySelectorAll("pre, div.math, mjx-container[display=true]")]
    .filter((e) => e.scrollWidth > e.clientWidth + 1)
    .map((e) => e.tagName.toLowerCase() + ": " + e.textContent.trim().slice(0, 60));
  document.body.setAttribute("data-overflowing", JSON.stringify(wide));
}, 5000));
</script>"""


def chromium() -> str | None:
    """The Chromium executable, if installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class _Text(html.parser.HTMLParser):
    """Visible text outside code, scripts and MathJax output; counts of the math elements."""

    SKIP = {"pre", "script", "style", "mjx-container", "code", "textarea"}

    def __init__(self):
        super().__init__()
        self.depth = 0
        self.text: list[str] = []
        self.math = 0
        self.containers = 0
        self.fonts: set[str] = set()

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if "math" in classes:
            self.math += 1
        if tag == "mjx-container":
            self.containers += 1
        if tag in self.SKIP:
            self.depth += 1

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if not self.depth:
            self.text.append(data)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files; HTML pages get the overflow probe before ``</body>``."""

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if path.suffix != ".html" or not path.is_file():
            return super().send_head()
        body = path.read_bytes().replace(b"</body>", PROBE + b"</body>")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


def _serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(_Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def render(browser: str, url: str, screenshot: Path | None, profile: Path) -> str:
    """The DOM of ``url`` after its scripts ran (10 s of virtual time), with no outside hosts;
    ``screenshot``: also a 1280-wide PNG of the top of the page."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--virtual-time-budget=10000",
    ]
    if screenshot is not None:
        shot = [*flags, f"--screenshot={screenshot}", "--window-size={WINDOW}", url]
        subprocess.run([browser, *shot], capture_output=True, timeout=120, check=True)
    done = subprocess.run(
        [browser, *flags, f"--window-size={WINDOW}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def check_page(built: str, rendered: str, math: bool = True) -> list[str]:
    """What is wrong with one page: ``built`` is its HTML file, ``rendered`` the DOM after
    MathJax ran. Empty if nothing. ``math=False``: a page without math, checked for a CDN and
    for blocks wider than their box only."""
    if not math:
        return _cdn(built) + _overflowing(rendered)
    problems = []
    if LOCAL_MATHJAX not in built:
        problems.append(f"the page does not load {LOCAL_MATHJAX}")
    problems += _cdn(built)
    source, dom = _Text(), _Text()
    source.feed(built)
    dom.feed(rendered)
    if source.math == 0:
        problems.append("the page has no math elements to check")
    if dom.containers != source.math:
        problems.append(
            f"{source.math} math elements in the HTML but {dom.containers} mjx-container "
            "elements after the scripts ran"
        )
    visible = "".join(dom.text)
    for d in DELIMITERS:
        if d in visible:
            at = visible.index(d)
            problems.append(f"raw {d} left in the text: ...{visible[max(0, at - 40) : at + 40]!r}")
    if "MJX-TEX" not in rendered and "MJXZERO" not in rendered:
        problems.append("MathJax's CommonHTML font faces are not in the rendered page")
    return problems + _overflowing(rendered)


def _cdn(built: str) -> list[str]:
    if "cdn.jsdelivr.net" in built or "mathjax@" in built:
        return ["the page still names a MathJax CDN"]
    return []


def _overflowing(rendered: str) -> list[str]:
    probe = re.search(r'data-overflowing="([^"]*)"', rendered)
    if probe is None:
        return ["the overflow probe did not run"]
    width = WINDOW.split(",")[0]
    return [
        f"wider than its box at {width} px: {b!r}"
        for b in json.loads(html.unescape(probe.group(1)))
    ]


def _pages(site: Path, patterns: list[str]) -> list[str]:
    """The pages the patterns name that have math (a named page without math is kept, and
    fails the check)."""
    out = []
    for pattern in patterns:
        if not any(c in pattern for c in "*?["):
            out.append(pattern)
            continue
        for path in sorted(site.glob(pattern)):
            if 'class="math' in path.read_text():
                out.append(str(path.relative_to(site)))
    return out


def _plain_pages(site: Path, patterns: list[str]) -> list[str]:
    """The pages the patterns name that have no math (those with math are checked in full)."""
    out = []
    for pattern in patterns:
        for path in sorted(site.glob(pattern)):
            if 'class="math' not in path.read_text():
                out.append(str(path.relative_to(site)))
    return out


def _check(args, browser: str, port: int, page: str, math: bool, profile: Path) -> bool:
    """Render one page (and its screenshot), print its line; True if it failed."""
    shot = None
    if args.screenshot_dir is not None:
        args.screenshot_dir.mkdir(parents=True, exist_ok=True)
        shot = (args.screenshot_dir / page.replace("/", "-")).with_suffix(".png")
    built = (args.site / page).read_text()
    rendered = render(browser, f"http://127.0.0.1:{port}/{page}", shot, profile)
    problems = check_page(built, rendered, math)
    n = _Text()
    n.feed(rendered)
    status = "FAIL" if problems else "ok"
    what = f"{n.containers} formulas rendered by the local MathJax" if math else "no math"
    print(f"{status}: {page}: {what}")
    for p in problems:
        print(f"  - {p}")
    return bool(problems)


def main(argv: list[str] | None = None) -> int:
    """Check each page; print one line per page and per problem."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the built site (docs/_build/html)")
    parser.add_argument("--pages", nargs="*", default=list(PAGES), help="paths or globs")
    parser.add_argument("--plain", nargs="*", default=list(PLAIN), help="pages without math")
    parser.add_argument("--screenshot-dir", type=Path)
    args = parser.parse_args(argv)
    browser = chromium()
    if browser is None:
        print("chromium is not installed (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    server, port = _serve(args.site)
    failed = False
    try:
        with tempfile.TemporaryDirectory() as profile:
            pages = [(page, True) for page in _pages(args.site, args.pages)]
            pages += [(page, False) for page in _plain_pages(args.site, args.plain)]
            for page, math in pages:
                failed |= _check(args, browser, port, page, math, Path(profile))
    finally:
        server.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
