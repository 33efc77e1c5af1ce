"""aevb: deep latent-variable models as Pyro model/guide pairs.

Generative models p(x, z) live in :mod:`aevb.models`, approximate posteriors q(z | x) in
:mod:`aevb.guides`, objectives, the one training loop and the estimators of log p(x) in
:mod:`aevb.inference`, datasets in :mod:`aevb.data`.
"""

__version__ = "0.1.0"

from aevb import data, guides, inference, models  # noqa: E402

__all__ = ["data", "guides", "inference", "models", "__version__"]
