"""M2, the semi-supervised generative model of Kingma, Rezende, Mohamed & Welling (2014).

    p(y) = Cat(y; 1/C)                    the class, one-hot
    p(z) = N(z; 0, I)                     the "style", independent of the class
    p(x | y, z) = prod_d Bernoulli(x_d; sigmoid(f_theta([z, y]))_d)

A datapoint's label is observed where it is known and a latent where it is not (label -1,
:meth:`aevb.data.Dataset.keep_labels`): the model calls ``pyro.sample("y", ..., obs=...,
obs_mask=labelled)``, which Pyro splits into a site ``y_observed`` (masked to the labelled
points) and a latent site ``y_unobserved`` (masked to the others) that the guide
(:class:`aevb.guides.SemiSupervisedEncoder`, q(y | x) q(z | x, y)) proposes. The per-datapoint
bounds are Kingma et al.'s eqs. 6 and 7::

    labelled:    log p(x, y) >= E_{q(z|x,y)}[log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)]
                 = -L(x, y)
    unlabelled:  log p(x)   >= sum_y q(y|x) (-L(x, y)) + H(q(y|x))  = -U(x)

Under the ``enum`` objectives the sum over y in U(x) is exact (the guide's ``y_unobserved`` is
enumerated). The classification term alpha * E[-log q(y|x)] on labelled data (eq. 9), which
trains q(y|x) on the labels too, is an objective of its own (``semisupervised``,
:mod:`aevb.inference.objectives.semisupervised`): it reads the labels and q(y|x) from the
traces, so it is not written into this model.

The test log-likelihood is log p(x) with y summed out (``marginal_labels``: the estimators
see the test set without its labels); the test classification error of argmax q(y|x) is the
paper's measure (Table 1).

References:
    D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling (2014), Semi-Supervised Learning with
    Deep Generative Models, NeurIPS, arXiv:1406.5298 (sec. 3.1.2, eqs. 6-9, Table 1).
    D. P. Kingma (2017), Variational Inference and Deep Learning: A New Synthesis, PhD thesis,
    chapter 3.

Example:
    >>> import torch
    >>> from aevb import models
    >>> m2 = models.build("m2", x_dim=6, z_dim=2, hidden=(8,))
    >>> m2.analogies(torch.zeros(3, 2)).shape         # 3 styles, every class
    torch.Size([3, 10, 6])
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch

from aevb.models.base import check_class_labels
from aevb.models.likelihoods import SplitRows
from aevb.models.nets import (
    enumeration_dims,
    one_hot,
    output_layer,
    partial_labels,
    plate_dim,
    register,
)
from aevb.models.vae import VAE, VAEConfig


@dataclass(frozen=True)
class M2Config(VAEConfig):
    #: 50 latent dims, one hidden layer of 500 softplus units, as Kingma et al. (2014,
    #: sec. 4.1) for M2 on MNIST
    z_dim: int = 50
    hidden: tuple[int, ...] = (500,)
    activation: str = "softplus"
    #: number of classes (10 MNIST digits)
    num_classes: int = 10


class M2(VAE):
    """p(x, y, z) = p(x | y, z) p(y) p(z), called as ``model(x, y)`` with labels y in
    0..C-1 where known and -1 where not (``y=None``: none known)."""

    name = "m2"
    config_class = M2Config
    default_guide = "semisupervised"
    guide_families = ("semisupervised",)
    default_objective = "semisupervised"
    uses_labels = True
    marginal_labels = True
    #: static structure: the label mask is tensor arithmetic, not a Python branch (the
    #: compiled semisupervised objective equals the eager one on batches with different
    #: labelled subsets, tests/test_m2.py)
    jit_compatible = True
    #: minibatches of 100 as in Kingma et al. (2014); Adam at 3e-4, their learning rate
    fit_defaults = {"batch_size": 100, "lr": 3e-4}

    @property
    def num_classes(self) -> int:
        return self.config.num_classes  # type: ignore[attr-defined]

    @property
    def decoder_input_dim(self) -> int:
        """The decoder reads [z, onehot(y)]."""
        return self.config.z_dim + self.num_classes

    def check_labels(self, y: torch.Tensor) -> None:
        """Labels must be integers in 0..C-1, or -1 where the label is unknown."""
        check_class_labels(y, self.num_classes, type(self).__name__, missing=True)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        num_samples: int | None = None,
    ):
        register(self.name, self)
        batch = self.batch_size(x, num_samples)
        anchor = output_layer(self.decoder).bias
        labelled, known = partial_labels(y, batch, self.num_classes, anchor)
        uniform = anchor.new_full((self.num_classes,), 1 / self.num_classes)
        y_prior = dist.OneHotCategorical(probs=uniform)
        with pyro.plate("data", batch):
            z = pyro.sample("z", self.prior(torch.Size(), anchor))
            y1h = pyro.sample("y", y_prior, obs=known, obs_mask=labelled)
            return pyro.sample("x", self.decode_labelled_once(z, y1h, labelled, known), obs=x)

    def decode_labelled_once(
        self, z: torch.Tensor, y1h: torch.Tensor, labelled: torch.Tensor, known: torch.Tensor
    ) -> dist.TorchDistribution:
        """p(x | y, z) as :meth:`decode_given`, with each labelled datapoint decoded once.

        Under enumeration of ``y_unobserved`` z and y carry one copy per class on the dims
        left of the plates ([C, (K,) B, .]). A labelled datapoint's y is its label in every
        copy, so its pixels are decoded from the first copy of z and shared by the others:
        one decoder pass for it instead of C. Each copy's term log p(x | y, z_1) is still an
        unbiased estimate of E_q[log p(x | y, z)] (z_1 ~ q(z | x, y) like every copy), so
        the objective's expectation is unchanged (``tests/test_m2.py``); its variance is not:
        the C copies used to average C independent draws of z for a labelled point, now they
        share one, as Kingma et al.'s and Pyro's one-draw estimate of L(x, y) does, so the
        labelled points' reconstruction term varies up to C times as much. Unlabelled datapoints
        are decoded once per class as before; the two parts are one site
        (:class:`~aevb.models.likelihoods.SplitRows`). The rows are index tensors, so a
        compiled objective follows each batch's labelled subset."""
        if plate_dim("data") != -1:  # an outer plate of the user's on the right: no sharing
            return self.decode_given(z, y1h)
        first = z[(0,) * enumeration_dims(z, event_dim=1)]
        own = labelled.nonzero().squeeze(-1)
        hidden = (~labelled).nonzero().squeeze(-1)
        parts = (
            self.decode_given(first.index_select(-2, own), known.index_select(0, own)),
            self.decode_given(z.index_select(-2, hidden), y1h.index_select(-2, hidden)),
        )
        return SplitRows(parts, (own, hidden), labelled.shape[0])

    @torch.no_grad()
    def analogies(self, z: torch.Tensor) -> torch.Tensor:
        """Means of p(x | y, z) for each style z [n, z_dim] and every class y:
        [n, C, x_dim] (Kingma et al. 2014, Figure 1: one z, every digit)."""
        y1h = torch.eye(self.num_classes, dtype=z.dtype, device=z.device)
        return self.decode_given(z[:, None, :], y1h).mean

    @torch.no_grad()
    def generate_per_class(self, n: int) -> torch.Tensor:
        """Means of p(x | y, z) for n draws z ~ p(z), each decoded with every class:
        [C, n, x_dim] (one row per class, one column per z)."""
        anchor = output_layer(self.decoder).bias
        z = self.prior(torch.Size([n]), anchor).sample()
        return self.analogies(z).transpose(0, 1)

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """n images: means of p(x | y, z) for y ~ p(y), z ~ p(z)."""
        anchor = output_layer(self.decoder).bias
        z = self.prior(torch.Size([n]), anchor).sample()
        y = torch.randint(self.num_classes, (n,), device=anchor.device)
        return self.decode_given(z, one_hot(y, self.num_classes, anchor)).mean

    @torch.no_grad()
    def evaluation_metrics(self, guide, test) -> dict:
        """The test classification error of argmax q(y | x) (Kingma et al. 2014, Table 1)."""
        if test.y is None or not hasattr(guide, "class_probs"):
            return {}
        device = output_layer(self.decoder).bias.device
        batches = test.batches(1000)
        pred = torch.cat([guide.class_probs(x.to(device)).argmax(-1).cpu() for (x,) in batches])
        known = test.y >= 0
        if not bool(known.any()):
            return {}
        return {"test_error": float((pred[known] != test.y[known]).float().mean())}
