"""The docs' catalogue page (``docs/catalogue.rst``), written from the registries: every
model, guide, objective, sampler, estimator and inference method by its name, with an anchor
(``.. _objective-trace:``), one line saying what it is, and the page that explains it.

    python scripts/catalogue.py --write     # rewrite docs/catalogue.rst

``tests/test_catalogue.py`` fails when a registered name has no page here (:data:`PAGES`),
when a page named does not exist, or when the checked-in catalogue is stale.
"""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = ROOT / "docs" / "catalogue.rst"

#: the page (under docs/, without suffix) that explains each registered name
PAGES = {
    "model": {
        "vae": "tutorials/vae",
        "fa": "tutorials/fa",
        "cvae": "tutorials/cvae",
        "gmvae": "tutorials/gmvae",
        "vrnn": "tutorials/vrnn",
        "m2": "tutorials/m2",
    },
    "guide": {
        "gaussian": "tutorials/vae",
        "iaf": "tutorials/iaf",
        "linear-gaussian": "tutorials/fa",
        "mixture": "tutorials/gmvae",
        "recurrent": "tutorials/vrnn",
        "semisupervised": "tutorials/m2",
    },
    "objective": {
        "trace": "concepts/estimators",
        "meanfield": "concepts/estimators",
        "iwae": "concepts/iwae_renyi",
        "renyi": "concepts/iwae_renyi",
        "iwae-dreg": "concepts/dreg",
        "renyi-dreg": "concepts/dreg",
        "rws": "concepts/rws",
        "l-mcvae": "concepts/mcvae",
        "a-mcvae": "concepts/mcvae",
        "metflow": "concepts/metflow",
        "stl": "concepts/stl",
        "enum": "tutorials/gmvae",
        "enum-meanfield": "tutorials/gmvae",
        "semisupervised": "tutorials/m2",
    },
    "sampler": {"hmc": "concepts/mcem", "nuts": "concepts/mcem", "batched-hmc": "concepts/mcem"},
    "estimator": {"is": "concepts/loglik", "ais": "concepts/loglik", "bdmc": "concepts/trust"},
    "method": {"svi": "concepts/aevb_em", "mcem": "concepts/mcem", "vi-mcmc": "concepts/vi_mcmc"},
}

TITLES = {
    "model": "Models",
    "guide": "Guides",
    "objective": "Objectives",
    "sampler": "Samplers (Monte Carlo EM's E-step)",
    "estimator": "Estimators of log p(x)",
    "method": "Inference methods",
}


def registries() -> dict[str, dict]:
    """Each kind's registry: name -> what it holds."""
    from aevb import guides, models
    from aevb.inference.estimators import ESTIMATORS
    from aevb.inference.method import METHODS
    from aevb.inference.objectives import OBJECTIVES
    from aevb.inference.samplers import SAMPLERS

    return {
        "model": models.MODELS,
        "guide": guides.GUIDES,
        "objective": OBJECTIVES,
        "sampler": SAMPLERS,
        "estimator": ESTIMATORS,
        "method": METHODS,
    }


def one_line(kind: str, entry) -> str:
    """What the entry is, in one sentence: an objective's summary, a method's title, else
    the first sentence of the class docstring."""
    if kind == "objective":
        text = entry.summary
    elif kind == "method":
        text = entry.title
    else:
        cls = entry if inspect.isclass(entry) else type(entry)
        text = (inspect.getdoc(cls) or "").split("\n\n")[0]
    text = " ".join(text.split())
    match = re.match(r"(.+?(?<!\bal)(?<!e\.g)(?<!i\.e)\.)(\s|$)", text)
    return match.group(1) if match else text


def catalogue() -> str:
    """The page's text."""
    lines = [
        "Catalogue",
        "=========",
        "",
        "Every name the command line, RunSpecs and grids accept, by kind, with the page that",
        "explains it. Written from the registries by ``python scripts/catalogue.py --write``.",
        "",
    ]
    for kind, registry in registries().items():
        title = TITLES[kind]
        lines += [title, "-" * len(title), ""]
        for name, entry in registry.items():
            lines += [
                f".. _{kind}-{name}:",
                "",
                f"``{name}``",
                f"   {one_line(kind, entry)} :doc:`{PAGES[kind][name]}`",
                "",
            ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="rewrite docs/catalogue.rst")
    args = p.parse_args()
    if args.write:
        CATALOGUE.write_text(catalogue())
    else:
        print(catalogue())


if __name__ == "__main__":
    main()
