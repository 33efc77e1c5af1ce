"""Variational RNN (Chung et al. 2015): a latent z_t at every step of a recurrence.

With features phi_x(x_t), phi_z(z_t) and a recurrent state h_t = RNN([phi_x(x_t), phi_z(z_t)],
h_{t-1}) (LSTM or GRU), the generative model is

    p(x_{1:T}, z_{1:T}) = prod_t p(z_t | h_{t-1}) p(x_t | z_t, h_{t-1})
    p(z_t | h_{t-1}) = N(mu_0(h_{t-1}), diag sigma_0(h_{t-1})^2)
    p(x_t | z_t, h_{t-1}) = prod_d Bernoulli(x_{t,d}; sigmoid(f([phi_z(z_t), h_{t-1}]))_d)

and the guide (:class:`aevb.guides.RecurrentEncoder`) is q(z_t | x_t, h_{t-1}) =
N(mu(phi_x(x_t), h_{t-1}), ...), run along the *same* recurrence with its own draws of z_t,
reparameterised (z_t = mu + sigma * eps) so that the encoder receives the gradient of the
reconstruction term. A whole sequence is one datapoint: the IWAE weight is over the sequence.
MNIST is read as T = 28 rows of D = 28 pixels. Padded steps of ragged sequences are masked.

References:
    J. Chung et al. (2015), A Recurrent Latent Variable Model for Sequential Data, NeurIPS.
    Z. Yang (2022), arXiv:2208.07818, sec. 5.6.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from aevb.models.base import LatentVariableModel
from aevb.models.nets import ACTIVATIONS, cat_broadcast, diagonal_gaussian, mlp, register


@dataclass(frozen=True)
class VRNNConfig:
    #: pixels per row (one time step)
    step_dim: int = 28
    #: rows per image (sequence length)
    seq_len: int = 28
    #: latent size per step; 16 fits a 2-core CPU (the tutorial uses 2)
    z_dim: int = 16
    #: recurrent state size; 128 for a 2-core CPU (the tutorial's preset: 256)
    rnn_dim: int = 128
    rnn: str = "lstm"
    #: width of the feature extractors and of the prior / emission / encoder heads
    hidden: int = 128
    activation: str = "relu"
    likelihood: str = "bernoulli"
    #: floor on every Gaussian scale (softplus(raw) + min_scale): keeps log-densities
    #: finite when a unit collapses
    min_scale: float = 1e-4


VRNN_PRESETS: dict[str, VRNNConfig] = {
    "cpu": VRNNConfig(),
    # the aevb-tutorial's sizes (z_t of 2 dims, 256 units); its recurrence stacks two LSTM
    # layers where this one has a single LSTM cell
    "tutorial": VRNNConfig(z_dim=2, rnn_dim=256, hidden=256),
}


class VRNN(LatentVariableModel):
    """The generative half of a VRNN; ``model(x)`` with x [B, T, D] or flat [B, T*D]."""

    name = "vrnn"
    config_class = VRNNConfig
    presets = VRNN_PRESETS
    default_guide = "recurrent"
    guide_families = ("recurrent",)
    fit_defaults = {"batch_size": 100, "lr": 1e-3}
    #: rows of x > 0.5, the aevb-tutorial's VRNN data
    default_binarize = "threshold"
    #: static structure for a given sequence length and mask shape (the mask is an argument,
    #: the loop over steps is fixed): SVI compiles it (aevb.inference.objectives.jit)
    jit_compatible = True

    def __init__(self, config: VRNNConfig | None = None):
        super().__init__()
        self.config = c = config or VRNNConfig()
        from aevb.models import likelihoods

        self.likelihood = likelihoods.get(c.likelihood)
        self.phi_x = mlp(c.step_dim, (), c.hidden, c.activation)
        self.phi_z = mlp(c.z_dim, (), c.hidden, c.activation)
        self.act = ACTIVATIONS[c.activation]()
        cell = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}[c.rnn]
        self.cell = cell(2 * c.hidden, c.rnn_dim)
        self.prior_net = mlp(c.rnn_dim, (c.hidden,), 2 * c.z_dim, c.activation)
        self.emit_net = mlp(c.hidden + c.rnn_dim, (c.hidden,), c.step_dim, c.activation)

    @classmethod
    def config_from_data(cls, data) -> dict:
        """Sequences [N, T, D] fix ``seq_len`` and ``step_dim``; flat MNIST images are read
        as the default 28 rows of 28 pixels."""
        if len(data.event_shape) == 2:
            return {"seq_len": data.event_shape[0], "step_dim": data.event_shape[1]}
        return {}

    @property
    def x_dim(self) -> int:  # a datapoint is a whole sequence
        return self.config.seq_len * self.config.step_dim

    def sequences(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T*D] or [B, T, D] -> [B, T, D]."""
        return x.reshape(x.shape[0], self.config.seq_len, self.config.step_dim)

    def check_data(self, x: torch.Tensor) -> None:
        from aevb.errors import DataError

        c = self.config
        if x.dim() not in (2, 3) or x[0].numel() != c.seq_len * c.step_dim:
            raise DataError(
                f"the VRNN expects sequences [N, {c.seq_len}, {c.step_dim}] (or flat "
                f"[N, {c.seq_len * c.step_dim}]), got {tuple(x.shape)}"
            )
        self.likelihood.check(x, c.likelihood)

    # --- the recurrence, shared with the guide -------------------------------------------
    def initial_state(self, batch: int, like: torch.Tensor):
        """h_0 (and the LSTM cell state) for ``batch`` sequences: zeros."""
        h = like.new_zeros(batch, self.config.rnn_dim)
        return (h, h.clone()) if self.config.rnn == "lstm" else h

    @staticmethod
    def hidden(state) -> torch.Tensor:
        return state[0] if isinstance(state, tuple) else state

    def advance(self, state, fx: torch.Tensor, z: torch.Tensor):
        """h_t = RNN([phi_x(x_t), phi_z(z_t)], h_{t-1}). The cell takes [N, F] inputs, so the
        leading (particle, batch) dims are flattened for it and restored after."""
        inp = cat_broadcast(fx, self.act(self.phi_z(z)))
        lead = torch.broadcast_shapes(inp.shape[:-1], self.hidden(state).shape[:-1])

        def flat(t: torch.Tensor) -> torch.Tensor:
            return t.expand(*lead, t.shape[-1]).reshape(-1, t.shape[-1])

        if isinstance(state, tuple):
            h, c = self.cell(flat(inp), (flat(state[0]), flat(state[1])))
            return h.reshape(*lead, -1), c.reshape(*lead, -1)
        return self.cell(flat(inp), flat(state)).reshape(*lead, -1)

    def features_x(self, x: torch.Tensor) -> torch.Tensor:
        """phi_x(x_t), the features of one step's pixels."""
        return self.act(self.phi_x(x))

    def step_prior(self, h: torch.Tensor) -> dist.TorchDistribution:
        """p(z_t | h_{t-1})."""
        loc, raw = self.prior_net(h).chunk(2, -1)
        return diagonal_gaussian(loc, raw, self.config.min_scale)

    def emission(self, z: torch.Tensor, h: torch.Tensor) -> dist.TorchDistribution:
        """p(x_t | z_t, h_{t-1})."""
        logits = self.emit_net(cat_broadcast(self.act(self.phi_z(z)), h))
        return self.likelihood.pixels(logits)

    def forward(
        self,
        x: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        num_samples: int | None = None,
    ):
        """The Pyro model over sequences; ``mask`` [B, T] (bool) marks real steps."""
        register(self.name, self)
        c = self.config
        seqs = self.sequences(x) if x is not None else None
        batch = self.batch_size(seqs, num_samples)
        like = next(self.parameters())
        state = self.initial_state(batch, like)
        shared = self._take_shared(x)
        xs = []
        with pyro.plate("data", batch):
            for t in pyro.markov(range(c.seq_len)):
                m: Any = True if mask is None else mask[:, t].bool()
                h = self.hidden(state)
                with pyro.poutine.mask(mask=m):
                    z = pyro.sample(f"z_{t}", self.step_prior(h))
                    obs = None if seqs is None else seqs[:, t]
                    x_t = pyro.sample(f"x_{t}", self.emission(z, h), obs=obs)
                xs.append(x_t)
                if shared is not None and t < len(shared) and shared[t][0] is z:
                    state = shared[t][1]  # the guide's h_t: the same function of the same z
                else:
                    shared = None
                    state = self.advance(state, self.features_x(x_t), z)
        return torch.stack(xs, -2)

    def share_recurrence(self, x: torch.Tensor) -> list:
        """A list the recurrent guide fills with ``(z_t, state_t)`` as it runs the recurrence
        on ``x``. When the model then runs on the same ``x`` and replays the guide's very
        tensors z_t (as every ELBO and IS does), h_t is the same function of the same inputs,
        so the model takes the guide's state instead of computing the recurrence a second
        time: the same values and gradients, half the recurrent work. Any other z_t (prior
        samples, MCMC, a conditioned model) is recomputed from there on."""
        steps: list = []
        self.__dict__["_shared"] = (x, steps)
        return steps

    def _take_shared(self, x) -> list | None:
        """The guide's recurrence on this very ``x``, once (then forgotten)."""
        shared = self.__dict__.pop("_shared", None)
        return shared[1] if shared is not None and x is not None and shared[0] is x else None

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """Images generated row by row from the prior recurrence (row means), [n, T*D]."""
        state = self.initial_state(n, next(self.parameters()))
        rows = []
        for _ in range(self.config.seq_len):
            h = self.hidden(state)
            z = self.step_prior(h).sample()
            p = self.emission(z, h)
            rows.append(p.mean)
            state = self.advance(state, self.features_x(p.sample()), z)
        return torch.stack(rows, 1).reshape(n, -1)
