"""Seaborn figures saved as PNG next to the numbers they show."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def learning_curves(histories: dict[str, pd.DataFrame], path: str | Path, title: str = "") -> Path:
    """Train bound (negated loss) and test ELBO per epoch, one colour per labelled run."""
    frames = []
    for label, h in histories.items():
        f = pd.DataFrame({"epoch": h["epoch"], "value": -h["train_loss"], "curve": "train bound"})
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
    path: str | Path,
    title: str = "",
    ncol: int = 10,
    shape: tuple[int, int] = (28, 28),
) -> Path:
    """A grid of images given as rows of pixel intensities in [0, 1]."""
    images = images.detach().reshape(-1, *shape).clamp(0, 1).cpu()
    n = images.shape[0]
    nrow = math.ceil(n / ncol)
    canvas = torch.ones(nrow * (shape[0] + 2), ncol * (shape[1] + 2))
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
def reconstructions(model, guide, x: torch.Tensor, path: str | Path, n: int = 10) -> Path:
    """Data (top row) and the means of p(x | z), z ~ q(z | x) (bottom row)."""
    x = x[:n]
    z = guide.posterior(x).sample()
    recon = model.reconstruct(z)
    return image_grid(torch.cat([x, recon]), path, "data (top), reconstructions (bottom)", ncol=n)


@torch.no_grad()
def prior_samples(model, path: str | Path, n: int = 50) -> Path:
    """Means of p(x | z) for z ~ p(z)."""
    return image_grid(model.generate(n), path, "samples: mean of p(x|z), z ~ p(z)")


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
