"""Adam over every parameter a step touches, as one ``torch.optim.Adam``.

``pyro.optim.Adam`` keeps one ``torch.optim.Adam`` per parameter, so a step of a 12-tensor
VAE walks 12 optimisers (each with its own hooks, profiler records and dispatch); on a 2-core
CPU that alone cost ~1.4 ms of a ~5 ms step (``scripts/bench.py``). This class keeps Pyro's
convenience -- parameters are found by tracing the step, so any model/guide pair works, and
new ones join when they first appear -- with a single optimiser. The update is the same
single-tensor Adam, so results match ``pyro.optim.Adam`` to the last bit.

Checkpoints store the Adam state per param-store name (``state_dict``), which is what makes
resuming independent of the order in which parameters were first seen. States saved by
``pyro.optim.PyroOptim.get_state`` (older runs) load too.

References:
    D. P. Kingma, J. Ba (2014), Adam: A Method for Stochastic Optimization, arXiv:1412.6980.

Example:
    >>> import torch
    >>> from aevb.inference.optim import Adam
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> (w ** 2).sum().backward()
    >>> opt = Adam(lr=0.1)
    >>> opt.step([("w", w)])
    >>> w.detach()                      # one Adam step moves each coordinate by ~lr
    tensor([0.9000, 0.9000, 0.9000])
"""

from __future__ import annotations

import torch

from aevb.errors import ConfigError


class Adam:
    """``torch.optim.Adam(lr, betas, eps)`` over the named parameters it is given.

    Call :meth:`step` with ``(name, unconstrained tensor)`` pairs whose ``.grad`` holds the
    gradient; it rescales, steps, and clears the gradients.
    """

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps = lr, tuple(betas), eps
        self.names: dict[str, torch.Tensor] = {}
        self.optim: torch.optim.Adam | None = None
        #: per-name states restored from a checkpoint, waiting for their parameter
        self.waiting: dict[str, dict] = {}

    def _add(self, named: list[tuple[str, torch.Tensor]]) -> None:
        new = [(n, p) for n, p in named if n not in self.names]
        if not new:
            return
        params = [p for _, p in new]
        if self.optim is None:
            self.optim = torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=self.eps)
        else:
            self.optim.add_param_group({"params": params})
        for n, p in new:
            self.names[n] = p
            if n in self.waiting:
                state = self.waiting.pop(n)
                # moments on the parameter's device; Adam keeps its step count on the CPU
                self.optim.state[p] = {
                    k: (v.clone().to(p.device if k != "step" else v.device))
                    if torch.is_tensor(v)
                    else v
                    for k, v in state.items()
                }

    def step(self, named: list[tuple[str, torch.Tensor]], scale: float = 1.0) -> None:
        """One Adam step on ``named`` (gradients divided by ``scale``), then clear grads.
        Parameters without a gradient are left alone, as in ``torch.optim``."""
        self._add(named)
        if self.optim is None:  # nothing to learn yet (a model and guide without parameters)
            return
        if scale != 1.0:
            for _, p in named:
                if p.grad is not None:
                    p.grad.div_(scale)
        self.optim.step()
        self.optim.zero_grad(set_to_none=True)

    def set_lr(self, lr: float) -> None:
        """The learning rate of every parameter, present and future."""
        self.lr = lr
        if self.optim is not None:
            for group in self.optim.param_groups:
                group["lr"] = lr

    def state_dict(self) -> dict:
        """``{"lr": ..., "state": {param name: Adam state}}``."""
        state = dict(self.waiting)
        if self.optim is not None:
            for n, p in self.names.items():
                if p in self.optim.state:
                    state[n] = dict(self.optim.state[p])
        return {"lr": self.lr, "state": state}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (or a ``PyroOptim.get_state()`` dict) before the
        first step; each parameter picks up its state when it first appears."""
        if "state" in state and "lr" in state:
            per_name = state["state"]
            self.set_lr(state["lr"])
        else:  # pyro.optim: {name: torch optimiser state_dict of one parameter}
            per_name = {}
            for n, sd in state.items():
                if not isinstance(sd, dict) or "param_groups" not in sd:
                    raise ConfigError("unrecognised optimiser state in the checkpoint")
                if sd.get("state"):
                    per_name[n] = next(iter(sd["state"].values()))
                self.set_lr(sd["param_groups"][0]["lr"])
        if self.optim is not None:
            raise ConfigError("load the optimiser state before the first step")
        self.waiting = dict(per_name)
