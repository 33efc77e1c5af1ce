"""Seaborn figures saved as PNG next to the numbers they show, or (``path=None``) returned as
a :class:`~matplotlib.figure.Figure`, which a notebook shows inline."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # a notebook keeps its inline backend
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pyro.poutine as poutine  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from aevb.devices import device_of, to_device  # noqa: E402
from aevb.models.base import hooks  # noqa: E402


def learning_curves(
    histories: dict[str, pd.DataFrame],
    path: str | Path | None = None,
    title: str = "",
    train_curve: str = "train bound",
) -> Path | Figure:
    """Negated train loss (``train_curve`` names it: the bound for SVI, log p(x, z) at the
    E-step draws for MCEM) and test ELBO per epoch, one colour per labelled run."""
    frames = []
    for label, h in histories.items():
        f = pd.DataFrame({"epoch": h["epoch"], "value": -h["train_loss"], "curve": train_curve})
        frames.append(f.assign(run=label))
        if "test_elbo" in h:
            g = pd.DataFrame({"epoch": h["epoch"], "value": h["test_elbo"], "curve": "test ELBO"})
            frames.append(g.assign(run=label))
    data = pd.concat(frames, ignore_index=True)
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    sns.lineplot(data=data, x="epoch", y="value", hue="run", style="curve", marker="o", ax=ax)
    ax.set_ylabel("nats per datapoint")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title or "learning curves")
    return _save(fig, path)


def image_grid(
    images: torch.Tensor,
    path: str | Path | None = None,
    title: str = "",
    ncol: int = 10,
    shape: tuple[int, int] = (28, 28),
) -> Path | Figure:
    """A grid of images given as rows of pixel intensities in [0, 1]."""
    images = images.detach().reshape(-1, *shape).clamp(0, 1).cpu()
    n = images.shape[0]
    nrow = math.ceil(n / ncol)
    canvas = torch.ones(nrow * (shape[0] + 2), ncol * (shape[1] + 2), device="cpu")
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[
            r * (shape[0] + 2) + 1 : r * (shape[0] + 2) + 1 + shape[0],
            c * (shape[1] + 2) + 1 : c * (shape[1] + 2) + 1 + shape[1],
        ] = images[i]
    fig, ax = plt.subplots(figsize=(ncol * 0.6, nrow * 0.6 + 0.4))
    ax.imshow(canvas.numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.axis("off")
    ax.set_title(title)
    return _save(fig, path)


@torch.no_grad()
def reconstruct(model, guide, args: tuple) -> torch.Tensor:
    """Means of p(x | z) at z ~ q(z | x) for a batch ``args`` = (x,) or (x, y): the guide's
    draws replayed through the model, so it works for any pair; the observed sites' means
    are concatenated in trace order (leaving out deterministic sites and the observed half of
    a partially observed one, such as M2's label: ``pyro.sample(..., obs_mask=...)``)."""
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    batch = args[0].shape[0]
    nodes = model_trace.nodes
    means = [  # one observed site ("x"), or one per step ("x_0", "x_1", ... for the VRNN)
        site["fn"].mean.reshape(batch, -1)
        for name, site in nodes.items()
        if site["type"] == "sample"
        and site["is_observed"]
        and not site["infer"].get("_deterministic")
        and not (name.endswith("_observed") and name[: -len("observed")] + "unobserved" in nodes)
    ]
    return torch.cat(means, -1)


def reconstructions(
    model, guide, args: tuple, path: str | Path | None = None, n: int = 10
) -> Path | Figure:
    """Data (top row) and reconstructions (bottom row)."""
    args = to_device(tuple(a[:n] for a in args), device_of(model, guide))
    recon = reconstruct(model, guide, args).cpu()
    return image_grid(
        torch.cat([args[0].cpu(), recon]), path, "data (top), reconstructions (bottom)", ncol=n
    )


@torch.no_grad()
def prior_samples(model, path: str | Path | None = None, n: int = 50) -> Path | Figure:
    """Means of p(x | z) for z ~ p(z)."""
    return image_grid(model.generate(n), path, "samples: mean of p(x|z), z ~ p(z)")


@torch.no_grad()
def class_samples(model, path: str | Path | None = None, n: int = 10) -> Path | Figure:
    """One row per class (CVAE label, GMVAE cluster): means of p(x | z), z ~ p(z | y)."""
    grid = model.generate_per_class(n)
    return image_grid(grid.reshape(-1, grid.shape[-1]), path, "one row per class y", ncol=n)


@torch.no_grad()
def analogies(
    model, guide, args: tuple, path: str | Path | None = None, n: int = 8
) -> Path | Figure:
    """One row per test image (x, y): the image, then the means of p(x | y', z) for its style
    z = E_q[z | x, y] and every class y' (Kingma et al. 2014, Figure 1)."""
    x, y = to_device(tuple(a[:n] for a in args[:2]), device_of(model, guide))
    grid = model.analogies(guide.style(x, y))  # [n, C, D]
    rows = torch.cat([x[:, None, :], grid], 1)
    title = "analogies: test image, then its style z with every class"
    return image_grid(rows.reshape(-1, rows.shape[-1]), path, title, ncol=rows.shape[1])


@torch.no_grad()
def cluster_embedding(guide, test, path: str | Path | None = None, n: int = 3000) -> Path | Figure:
    """2-d PCA of E_q[z | x] coloured by true label and by the cluster argmax q(y | x)."""
    from aevb.inference.evaluate import posterior_means

    part = test.subset(n)
    means = posterior_means(guide, part)
    centred = means - means.mean(0)
    _, _, v = torch.pca_lowrank(centred, q=2, center=False)
    xy = (centred @ v[:, :2]).numpy()
    device = device_of(guide)
    batches = part.batches(1000)
    clusters = torch.cat([guide.cluster_probs(x.to(device)).argmax(-1).cpu() for (x,) in batches])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, colour, title in (
        (axes[0], part.y, "coloured by true label"),
        (axes[1], clusters, "coloured by cluster argmax q(y|x)"),
    ):
        if colour is None:
            continue
        frame = pd.DataFrame({"pc1": xy[:, 0], "pc2": xy[:, 1], "c": colour.numpy().astype(str)})
        sns.scatterplot(
            data=frame,
            x="pc1",
            y="pc2",
            hue="c",
            s=6,
            linewidth=0,
            ax=ax,
            palette="tab10",
            legend=False,
        )
        ax.set_title(f"E_q[z|x], PCA: {title}")
    return _save(fig, path)


def run_figures(
    model,
    guide,
    test,
    history: pd.DataFrame,
    out: str | Path,
    label: str,
    train_curve: str = "train bound",
) -> list:
    """The figures a run directory gets, by what the model and data offer."""
    out = Path(out)
    made = [learning_curves({label: history}, out / "learning_curve.png", train_curve=train_curve)]
    side = int(round(test.x_dim**0.5))
    if side * side != test.x_dim or side < 8:  # not image data: curves only
        return made
    if guide is None:
        return made + [prior_samples(model, out / "samples.png")] * hasattr(model, "generate")
    labels = hooks(model).uses_labels
    args = next(test.batches(10, labels=labels))
    made.append(reconstructions(model, guide, args, out / "reconstructions.png"))
    if hasattr(model, "generate"):
        made.append(prior_samples(model, out / "samples.png"))
    if hasattr(model, "generate_per_class"):
        made.append(class_samples(model, out / "class_samples.png"))
    if labels and hasattr(model, "analogies") and hasattr(guide, "style"):
        made.append(analogies(model, guide, args, out / "analogies.png"))
    if hasattr(guide, "cluster_probs"):
        made.append(cluster_embedding(guide, test, out / "cluster_embedding.png"))
    return made


def nll_against_passes(
    stages: pd.DataFrame,
    paper: dict[str, float] | None = None,
    path: str | Path | None = None,
    title: str = "",
) -> Path | Figure:
    """Test NLL (nats) against training passes, log-scaled, one line per run (``stages``:
    columns run, passes, nll), with each cell's published figure as a dashed line of its
    colour (``paper``: {run-name prefix: NLL}) where one is given."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    palette = sns.color_palette(n_colors=max(1, stages["run"].nunique()))
    for colour, (run, rows) in zip(palette, stages.groupby("run", sort=False), strict=False):
        rows = rows.sort_values("passes")
        ax.plot(rows["passes"], rows["nll"], marker="o", color=colour, label=run)
        for prefix, value in (paper or {}).items():
            if run.startswith(prefix):
                ax.axhline(value, color=colour, linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("passes over the training set")
    ax.set_ylabel("test NLL (nats, lower is better)")
    ax.set_title(title or "dashed: the published figure")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


#: per-epoch model metrics a grid's histories may hold, and their axis labels
METRIC_CURVES = {"test_error": "classification error", "cluster_accuracy": "cluster accuracy"}


def metric_curves(
    histories: pd.DataFrame,
    column: str,
    reference: dict | None = None,
    path: str | Path | None = None,
) -> Path | Figure:
    """A model metric (``column``: ``test_error``, ``cluster_accuracy``) against epochs, one
    colour per cell (the mean over seeds, each seed a thin line), the validation set's
    (``valid_...``) dashed where the runs hold one out, and each cell's published figure
    (``reference``: {cell: {column: value}}, a grid config's ``[reference.cells]``) as a
    dotted line of its colour."""
    valid = "valid_" + column.removeprefix("test_")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    cells = list(dict.fromkeys(histories["cell"]))
    for colour, cell in zip(sns.color_palette(n_colors=len(cells)), cells, strict=True):
        rows = histories[histories["cell"] == cell]
        for name, style in ((column, "-"), (valid, "--")):
            if name not in rows or rows[name].isna().all():
                continue
            for _, seed_rows in rows.groupby("seed"):
                ax.plot(seed_rows["epoch"], seed_rows[name], color=colour, ls=style, lw=0.6)
            mean = rows.groupby("epoch")[name].mean()
            tag = "validation" if name == valid else "test"
            ax.plot(mean.index, mean.values, color=colour, ls=style, lw=2, label=f"{cell} {tag}")
        published = ((reference or {}).get(cell) or {}).get(column)
        if published is not None:
            ax.axhline(published, color=colour, ls=":", lw=1.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel(METRIC_CURVES.get(column, column))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("dotted: the published figure; thin: each seed")
    ax.legend(fontsize="small")
    return _save(fig, path)


def _save(fig: Figure, path: str | Path | None) -> Path | Figure:
    """Write ``fig`` to ``path`` as PNG and close it; with no path, close it and return it (the
    last expression of a notebook cell then shows it once)."""
    fig.tight_layout()
    if path is None:
        plt.close(fig)
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
