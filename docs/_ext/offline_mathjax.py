"""Sphinx extension: MathJax served from the built site, so the math renders without network.

``sphinx.ext.mathjax`` points every page at a CDN; opened offline (a classroom, a train, an
exam room) such a page shows raw TeX. This extension fetches MathJax once from the npm
registry -- the tarball of ``mathjax@3.2.2``, verified against its SHA-256 like MNIST's files
(:mod:`aevb.data.mnist`) -- keeps it in ``~/.cache/aevb/mathjax`` (``$AEVB_DATA/mathjax`` if
set), unpacks the CommonHTML build and its fonts into a static folder of the site and sets
``mathjax_path`` to it. Bytes that do not match the checksum are never unpacked.

MathJax 3 is self-contained (its fonts ship in the same package); MathJax 4 keeps them in a
second package, so 3.2.2 is the smaller, single fetch.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import urllib.request
from pathlib import Path

from sphinx.errors import ExtensionError

VERSION = "3.2.2"
TARBALL = f"https://registry.npmjs.org/mathjax/-/mathjax-{VERSION}.tgz"
#: SHA-256 of the npm tarball (npm's own sha512 integrity is
#: Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==)
SHA256 = "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09"
#: the parts of ``package/es5`` a page needs: the TeX-to-CommonHTML component, its fonts, the
#: TeX extensions it autoloads (\boldsymbol, ...), the menu and its accessibility parts
KEEP = ("tex-chtml.js", "output/chtml/", "input/tex/", "ui/", "a11y/", "adaptors/")
ENTRY = "mathjax/tex-chtml.js"


def cache_dir() -> Path:
    """``$AEVB_DATA/mathjax`` or ``~/.cache/aevb/mathjax``."""
    root = os.environ.get("AEVB_DATA")
    return (Path(root) if root else Path.home() / ".cache" / "aevb") / "mathjax"


def verify(raw: bytes, source: str) -> bytes:
    """``raw`` if its SHA-256 is the tarball's; an :class:`ExtensionError` if not."""
    got = hashlib.sha256(raw).hexdigest()
    if got != SHA256:
        raise ExtensionError(
            f"checksum mismatch for mathjax-{VERSION}.tgz from {source}: expected SHA-256 "
            f"{SHA256}, got {got}; refusing to use these bytes"
        )
    return raw


def tarball(cache: Path | None = None, url: str = TARBALL) -> bytes:
    """The verified tarball: from the cache, else fetched from ``url`` and cached atomically."""
    cache = cache or cache_dir()
    path = cache / f"mathjax-{VERSION}.tgz"
    if path.is_file():
        try:
            return verify(path.read_bytes(), str(path))
        except ExtensionError as err:
            raise ExtensionError(f"{err}; delete {path} to fetch it again") from err
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            raw = verify(response.read(), url)
    except OSError as err:
        raise ExtensionError(
            f"MathJax {VERSION} is not in {cache} and {url} could not be fetched ({err}); "
            f"on a machine with network, `npm pack mathjax@{VERSION}` gives the file to put "
            "there"
        ) from err
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(raw)
    tmp.replace(path)
    return raw


def unpack(raw: bytes, static: Path) -> Path:
    """Write the kept parts of ``package/es5`` to ``static/mathjax``; returns the entry file."""
    target = static / "mathjax"
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar.getmembers():
            rel = member.name.removeprefix("package/es5/")
            if not member.isfile() or rel == member.name or not rel.startswith(KEEP):
                continue
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            extracted = tar.extractfile(member)
            assert extracted is not None
            out.write_bytes(extracted.read())
    return static / ENTRY


def _install(app) -> None:
    if app.builder.format != "html":  # doctest, linkcheck, ...: no pages, nothing to fetch
        return
    static = Path(app.outdir).parent / f"mathjax-{VERSION}"
    if not (static / ENTRY).is_file():
        unpack(tarball(), static)
    app.config.html_static_path = [*app.config.html_static_path, str(static)]
    app.config.mathjax_path = ENTRY


def setup(app):
    """Register the hook (after ``sphinx.ext.mathjax`` has added its settings)."""
    app.setup_extension("sphinx.ext.mathjax")
    app.connect("builder-inited", _install)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
