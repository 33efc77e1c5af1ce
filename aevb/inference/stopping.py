"""Early stopping on a validation split held out of the training set.

After every epoch the loop scores the validation set as it scores the test set (the ELBO
and the model's own metrics: M2's classification error, GMVAE's cluster accuracy, FA's exact
evidence) into ``valid_*`` columns of ``history.csv``. With ``patience`` P the run stops once
the watched column (``monitor``) has gone P epochs without improving on its best, and the
parameters of that best epoch are the run's result: kept in ``best.pt`` beside the
checkpoint (written before it, so a resumed run finds the best of the epochs it has) and
loaded back into the model and guide when training ends. The test set never chooses the epoch.

Pyro's semi-supervised VAE tutorial holds out MNIST's last 10,000 training images this way
(``data.validation = 10000``) and reports the test accuracy at the best validation accuracy.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pyro
import torch

from aevb.devices import to_cpu
from aevb.inference import rundir
from aevb.inference.saved import load_params

#: what early stopping can watch: the column ``valid_<name>`` and whether larger is better
MONITORS = {"elbo": True, "error": False, "cluster_accuracy": True, "log_evidence_exact": True}


def validation_columns(metrics: dict) -> dict:
    """The test-set metrics of an epoch (:func:`aevb.inference.loop.evaluate_epoch`) named
    as the validation set's: ``test_elbo`` -> ``valid_elbo``, ``cluster_accuracy`` ->
    ``valid_cluster_accuracy``, ``eval_seconds`` -> ``valid_seconds``."""
    out = {}
    for key, value in metrics.items():
        name = key.removeprefix("test_").removeprefix("eval_")
        out[f"valid_{name}"] = value
    return out


def best_epoch(rows: list[dict], monitor: str) -> int | None:
    """The epoch whose ``valid_<monitor>`` is best so far (the earliest of equals), or None
    while no row has a finite value."""
    column, larger = f"valid_{monitor}", MONITORS[monitor]
    best = None
    for row in rows:
        value = row.get(column)
        if value is None or not math.isfinite(value):
            continue
        if best is None or (value > best[0] if larger else value < best[0]):
            best = (value, row["epoch"])
    return None if best is None else best[1]


def patience_spent(rows: list[dict], monitor: str, patience: int | None) -> bool:
    """Whether the last ``patience`` epochs all failed to improve on the best before them."""
    if patience is None or not rows:
        return False
    best = best_epoch(rows, monitor)
    return best is not None and rows[-1]["epoch"] - best >= patience


def scored_too_early(run_dir, epochs: int | None, patience: int | None) -> bool:
    """Whether a run was scored before the ``epochs`` now asked for
    (:func:`~aevb.inference.rundir.evaluated_too_early`) and must train on, unless its
    early-stopping rule has ended it: with its own monitor and the ``patience`` asked now
    (which a resume may have raised) spent, the run is finished, not short."""
    if not rundir.evaluated_too_early(run_dir, epochs):
        return False
    record = rundir.upgrade_record(rundir.read_config(run_dir))
    monitor = record.get("fit", {}).get("monitor", "elbo")
    rows = rundir.read_history(run_dir).to_dict("records")
    return not patience_spent(rows, monitor, patience)


class BestState:
    """The parameters of the best epoch so far, in memory and (with a run folder) in
    ``best.pt``."""

    def __init__(self, out_dir: Path | None, resumed: bool):
        self.out_dir = out_dir
        #: a resumed run's best so far (``best.pt``); a fresh run has none yet
        self.state = rundir.read_best(out_dir) if resumed and out_dir is not None else None

    def keep(self, model, guide, epoch: int) -> None:
        """Take the current parameters as the best (epoch ``epoch``)."""
        state = {
            "epoch": epoch,
            "params": pyro.get_param_store().get_state(),
            "modules": rundir.module_states(model, guide),
        }
        self.state = copy.deepcopy(to_cpu(state))  # not the live tensors
        if self.out_dir is not None:
            rundir.write_best(self.out_dir, self.state)

    def restore(self, model, guide, device: torch.device) -> int | None:
        """Load the best epoch's parameters into model and guide; returns its epoch (None,
        and nothing loaded, where none was kept)."""
        if self.state is None:
            return None
        load_params(model, guide, self.state, device)
        return int(self.state["epoch"])
