"""Math that renders without network: the docs' MathJax is fetched once from the npm registry,
checksum-verified and served by the site (``docs/_ext/offline_mathjax.py``); headless Chromium
with every outside host unreachable typesets a page built that way and leaves raw TeX on a page
built with the CDN default (``scripts/check_offline_math.py``; ``make docs-check`` runs the
same check on the real VAE pages)."""

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from sphinx.errors import ExtensionError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
sys.path.insert(0, str(ROOT / "scripts"))
import check_offline_math  # noqa: E402
import offline_mathjax  # noqa: E402


def test_bytes_that_are_not_the_tarball_are_refused(tmp_path):
    with pytest.raises(ExtensionError, match="checksum mismatch for mathjax-3.2.2.tgz"):
        offline_mathjax.verify(b"not mathjax", "test")
    (tmp_path / "mathjax-3.2.2.tgz").write_bytes(b"a truncated download")
    with pytest.raises(ExtensionError, match="delete .* to fetch it again"):
        offline_mathjax.tarball(cache=tmp_path)
    assert not (tmp_path / "mathjax").exists()


def test_unpack_keeps_what_a_page_needs(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in (
            "package/es5/tex-chtml.js",
            "package/es5/output/chtml/fonts/woff-v2/MathJax_Zero.woff",
            "package/es5/input/tex/extensions/boldsymbol.js",
            "package/es5/sre/mathmaps/en.json",
            "package/es5/tex-svg.js",
            "package/README.md",
        ):
            info = tarfile.TarInfo(name)
            info.size = len(name)
            tar.addfile(info, io.BytesIO(name.encode()))
    entry = offline_mathjax.unpack(buf.getvalue(), tmp_path)
    assert entry == tmp_path / "mathjax" / "tex-chtml.js" and entry.is_file()
    kept = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert kept == [
        "mathjax/input/tex/extensions/boldsymbol.js",
        "mathjax/output/chtml/fonts/woff-v2/MathJax_Zero.woff",
        "mathjax/tex-chtml.js",
    ]


PAGE = r"""Math
====

Inline :math:`\mathrm{KL}(q \,\|\, p) \ge 0` and displayed:

.. math::

   \log p(x) \ge \mathbb{E}_{q(z|x)}[\log p(x, z) - \log q(z \mid x)]

.. code-block:: python

   elbo = log_p_xz.mean() - log_q.mean()  # a short line of code
"""


def _site(tmp_path: Path, extension: str) -> Path:
    src = tmp_path / f"src-{extension}"
    src.mkdir()
    (src / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT / 'docs' / '_ext')!r})\n"
        f"extensions = [{extension!r}]\nhtml_theme = 'furo'\n"
    )
    (src / "index.rst").write_text(PAGE)
    out = tmp_path / f"out-{extension}" / "html"
    sphinx = Path(sys.executable).parent / "sphinx-build"
    done = subprocess.run(
        [str(sphinx), "-q", "-b", "html", str(src), str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def _problems(site: Path, tmp_path: Path) -> list[str]:
    server, port = check_offline_math._serve(site)
    try:
        rendered = check_offline_math.render(
            check_offline_math.chromium(), f"http://127.0.0.1:{port}/index.html", None, tmp_path
        )
    finally:
        server.shutdown()
    return check_offline_math.check_page((site / "index.html").read_text(), rendered)


@pytest.mark.skipif(check_offline_math.chromium() is None, reason="needs Debian's chromium")
def test_headless_chromium_without_network_renders_the_local_mathjax(tmp_path):
    """The offline build: 2 math elements in the HTML, 2 ``mjx-container`` elements after the
    scripts ran, no raw delimiters, MathJax's fonts in use, nothing wider than its box. The
    CDN build of the same page, opened the same way, keeps its TeX."""
    offline = _site(tmp_path, "offline_mathjax")
    assert (offline / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert _problems(offline, tmp_path / "profile-offline") == []

    cdn = _site(tmp_path, "sphinx.ext.mathjax")
    problems = _problems(cdn, tmp_path / "profile-cdn")
    assert any("does not load _static/mathjax/tex-chtml.js" in p for p in problems), problems
    assert any("0 mjx-container" in p for p in problems), problems
    assert any("raw \\[ left in the text" in p for p in problems), problems
