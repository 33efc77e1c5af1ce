"""Factor analysis: the linear-Gaussian latent-variable model with closed-form evidence.

    p(z) = N(z; 0, I_L)
    p(x | z) = N(x; W z, Phi),        Phi = diag(sigma^2),  sigma = softplus(rho) > 0

Integrating z out gives the exact evidence and posterior (Murphy 2012, sec. 12.1):

    p(x) = N(x; 0, W W^T + Phi)
    p(z | x) = N(z; S W^T Phi^{-1} x, S),      S = (I_L + W^T Phi^{-1} W)^{-1}

so the posterior mean is linear in x and its covariance does not depend on x. That makes FA
the referee of every estimator in the package: an ELBO, IS or AIS estimate can be compared
with :meth:`FactorAnalysis.log_evidence`, and a sampler's draws with
:meth:`FactorAnalysis.exact_posterior`. The data are assumed centred (de-mean them first).

References:
    Z. Yang (2022), Training Latent Variable Models with Auto-encoding Variational Bayes:
    A Tutorial, arXiv:2208.07818, sec. 5.2.
    K. P. Murphy (2012), Machine Learning: A Probabilistic Perspective, sec. 12.1.

Example:
    >>> import torch
    >>> from aevb import models
    >>> fa = models.build("fa")
    >>> x = torch.randn(5, 3)
    >>> fa.log_evidence(x).shape
    torch.Size([5])
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from aevb.models.base import LatentVariableModel
from aevb.models.nets import register


@dataclass(frozen=True)
class FAConfig:
    #: observed dimension D (the aevb-tutorial fits D=3)
    x_dim: int = 3
    #: latent dimension L (the tutorial's L=2)
    z_dim: int = 2


class FactorAnalysis(LatentVariableModel):
    """p(x, z) = N(x; W z, diag sigma^2) N(z; 0, I)."""

    name = "fa"
    config_class = FAConfig
    default_guide = "linear-gaussian"
    uses_labels = False
    #: the aevb-tutorial's recipe for FA: minibatches of 32, Adam with lr 1e-2, 35 epochs
    fit_defaults = {"batch_size": 32, "lr": 1e-2, "epochs": 35}
    #: Monte Carlo EM: the same for 30 epochs, the learning rate decaying to 1/10 over them
    #: (and staying there if a run is extended). With a constant lr the M-step noise kept the
    #: exact test evidence 0.02-0.12 nats below the truth after 20 epochs (seeds 0, 1;
    #: docs/results/mcem.rst)
    mcem_defaults = {
        "batch_size": 32,
        "lr": 1e-2,
        "epochs": 30,
        "lr_decay": 0.1,
        "lr_decay_epochs": 30,
    }

    def __init__(self, config: FAConfig | None = None):
        super().__init__()
        self.config = config or FAConfig()
        self.W = nn.Parameter(torch.empty(self.config.x_dim, self.config.z_dim))
        self.rho = nn.Parameter(torch.empty(self.config.x_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """W and the pre-softplus noise scales ~ N(0, 1), as in the aevb-tutorial."""
        nn.init.normal_(self.W)
        nn.init.normal_(self.rho)

    @property
    def sigma(self) -> torch.Tensor:
        """Noise standard deviations, sqrt(diag Phi)."""
        return F.softplus(self.rho)

    def prior(self) -> dist.TorchDistribution:
        """p(z) = N(0, I_L), as a MultivariateNormal so KL(q || p) is analytic for both the
        full-covariance and the diagonal guide (TraceMeanField_ELBO)."""
        eye = torch.eye(self.z_dim, dtype=self.W.dtype, device=self.W.device)
        return dist.MultivariateNormal(self.W.new_zeros(self.z_dim), scale_tril=eye)

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z) = N(W z, diag sigma^2)."""
        return dist.Normal(z @ self.W.T, self.sigma).to_event(1)

    def forward(self, x: torch.Tensor | None = None, num_samples: int | None = None):
        register(self.name, self)
        batch = self.batch_size(x, num_samples)
        with pyro.plate("data", batch):
            z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.decode(z), obs=x)

    def marginal(self) -> dist.MultivariateNormal:
        """p(x) = N(0, W W^T + Phi)."""
        cov = self.W @ self.W.T + torch.diag(self.sigma**2)
        return dist.MultivariateNormal(self.W.new_zeros(self.x_dim), covariance_matrix=cov)

    def log_evidence(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) per datapoint, [N]."""
        return self.marginal().log_prob(x)

    def exact_posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        """p(z | x) = N(S W^T Phi^{-1} x, S), S = (I + W^T Phi^{-1} W)^{-1}; batch shape [N]."""
        V, L = self.exact_posterior_parameters()
        return dist.MultivariateNormal(x @ V.T, scale_tril=L.expand(x.shape[0], -1, -1))

    def exact_posterior_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(V, L)`` with p(z | x) = N(V x, L L^T): plug into a linear-Gaussian guide."""
        w_phi = self.W.T / self.sigma**2
        eye = torch.eye(self.z_dim, dtype=self.W.dtype, device=self.W.device)
        cov = torch.linalg.inv(eye + w_phi @ self.W)
        return cov @ w_phi, torch.linalg.cholesky(cov)

    def exact_elbo(self, x: torch.Tensor, loc: torch.Tensor, scale_tril: torch.Tensor):
        """The ELBO in closed form for q(z|x) = N(loc, L L^T), per datapoint [N]:

        E_q[log N(x; W z, Phi)] - KL(q || N(0, I)), with
        E_q[(x - W z)_d^2] = (x - W m)_d^2 + (W S W^T)_dd and
        KL = (tr S + m^T m - L - log det S) / 2, S = L L^T.

        ``scale_tril`` is one factor [L, L] shared by every datapoint (the linear guide) or
        one per datapoint [N, L, L] (e.g. ``torch.diag_embed`` of a diagonal encoder's scales).
        """
        var = self.sigma**2
        S = scale_tril @ scale_tril.mT
        resid = x - loc @ self.W.T
        spread = torch.diagonal(self.W @ S @ self.W.T, dim1=-2, dim2=-1)
        quad = (resid**2 + spread) / var
        expected_ll = -0.5 * (quad + torch.log(2 * torch.pi * var)).sum(-1)
        logdet = 2 * torch.log(torch.diagonal(scale_tril, dim1=-2, dim2=-1)).sum(-1)
        trace = torch.diagonal(S, dim1=-2, dim2=-1).sum(-1)
        kl = 0.5 * (trace + (loc**2).sum(-1) - self.z_dim - logdet)
        return expected_ll - kl

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """n draws x ~ p(x) (samples, not means: FA's predictive check compares point clouds)."""
        return self.marginal().sample((n,))

    @torch.no_grad()
    def evaluation_metrics(self, guide, test) -> dict:
        """The exact test evidence, reported beside the IS estimate (nats per datapoint)."""
        x = test.x.to(self.W.device)
        return {"test_log_evidence_exact": float(self.log_evidence(x).mean())}

    def set_parameters(self, W: torch.Tensor, sigma: torch.Tensor) -> FactorAnalysis:
        """Set W and the noise scales (e.g. to a known ground truth); returns self."""
        with torch.no_grad():
            self.W.copy_(W)
            self.rho.copy_(sigma + torch.log(-torch.expm1(-sigma)))  # softplus^{-1}
        return self
