"""Per-datapoint chain state shared by the methods that keep a Markov chain (or its step
size) per training datapoint between visits: Monte Carlo EM (:mod:`aevb.inference.mcem`) and
MCMC-refined VI (:mod:`aevb.inference.vimcmc`)."""

from __future__ import annotations

import torch

from aevb.inference.samplers import Latents


class ChainState:
    """Step sizes (one per datapoint, or one shared), visit marks and the epoch's acceptance
    and step-size means. Its :meth:`state_dict` is the ``step_size`` and ``visited`` entries
    of the owner's checkpoint; the owner keeps the running means' layout."""

    def __init__(self) -> None:
        # allocated by allocate(), on the device of the data
        self.step_size = torch.empty(0, device="cpu")
        self.visited = torch.empty(0, dtype=torch.bool, device="cpu")
        self.reset_counters()

    def reset_counters(self) -> None:
        """Forget the epoch's acceptance and step-size records."""
        self.acc: list[float] = []
        self.eps: list[float] = []

    def allocate(self, n: int, size: int, like: torch.Tensor, init_step_size: float) -> None:
        """No datapoint visited among ``n``; ``size`` step sizes at ``init_step_size`` on the
        device and dtype of ``like``."""
        self.step_size = like.new_full((size,), init_step_size)
        self.visited = torch.zeros(n, dtype=torch.bool, device=like.device)

    def new(self, index: torch.Tensor) -> torch.Tensor:
        """Which datapoints of ``index`` have no chain yet."""
        return ~self.visited[index]

    def start_step_sizes(
        self, sampler, latents: Latents, args: tuple, u0: torch.Tensor, index, new, scale=1.0
    ) -> torch.Tensor:
        """The datapoints' step sizes (times ``scale``), new chains' from the sampler's
        search for an initial step size at ``u0``."""
        eps = self.step_size[index] * scale
        if bool(new.any()):
            start = sampler.initial_step_size(latents, args, u0, eps)
            eps = torch.where(new, start, eps)
        return eps

    def record(self, state) -> None:
        """Note a sampler state's mean acceptance and step size."""
        self.acc.append(float(state.accept_prob.mean()))
        self.eps.append(float(state.step_size.mean()))

    def means(self) -> dict:
        """The epoch's mean ``accept_prob`` and ``step_size`` (0 before any transition)."""
        n = max(len(self.acc), 1)
        return {"accept_prob": sum(self.acc) / n, "step_size": sum(self.eps) / n}

    def state_dict(self) -> dict:
        """``step_size`` and ``visited`` (copies)."""
        return {"step_size": self.step_size.clone(), "visited": self.visited.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``step_size`` and ``visited`` onto the device :meth:`allocate` used."""
        device = self.step_size.device
        self.step_size = state["step_size"].to(device)
        self.visited = state["visited"].to(device)
