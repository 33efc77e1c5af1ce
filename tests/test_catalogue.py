"""Every registered name has an anchor in the docs' catalogue and a page that explains it
(``python scripts/catalogue.py --write`` rewrites the catalogue from the registries)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import catalogue  # noqa: E402


def test_every_registered_name_has_a_page_that_exists():
    for kind, registry in catalogue.registries().items():
        pages = catalogue.PAGES[kind]
        missing = sorted(set(registry) - set(pages))
        assert not missing, f"{kind}s without a page in scripts/catalogue.py PAGES: {missing}"
        for name in registry:
            page = ROOT / "docs" / pages[name]
            assert page.with_suffix(".rst").is_file() or page.with_suffix(".md").is_file(), page


def test_the_catalogue_is_the_registries_and_anchors_every_name():
    text = catalogue.CATALOGUE.read_text()
    assert text == catalogue.catalogue(), "run: python scripts/catalogue.py --write"
    for kind, registry in catalogue.registries().items():
        for name in registry:
            assert f".. _{kind}-{name}:" in text


def test_every_cli_command_has_an_anchor_in_the_usage_page():
    from aevb.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    text = (ROOT / "docs" / "usage.rst").read_text()
    missing = [name for name in sub.choices if f".. _cli-{name}:" not in text]
    assert not missing, f"aevb commands without an anchor in docs/usage.rst: {missing}"
