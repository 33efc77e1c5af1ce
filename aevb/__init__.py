"""aevb: deep latent-variable models as Pyro model/guide pairs.

Generative models p(x, z) live in :mod:`aevb.models`, approximate posteriors q(z | x) in
:mod:`aevb.guides`, objectives, the one training loop and the estimators of log p(x) in
:mod:`aevb.inference`, datasets in :mod:`aevb.data`.
"""

from aevb import data, guides, inference, models
from aevb.version import __version__

__all__ = ["data", "guides", "inference", "models", "__version__"]
