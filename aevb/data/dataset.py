"""The :class:`Dataset` every training loop and estimator consumes, and its binarisations.

A dataset holds raw values ``x`` (float32, one row per datapoint) and optional integer labels.
Binarisation is applied when batches are drawn, so ``dynamic`` gives a fresh Bernoulli draw
per pass (Burda et al. 2015's protocol) while the stored intensities stay untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from aevb.devices import to_device
from aevb.errors import DataError
from aevb.registry import lookup


def _dynamic(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    return torch.bernoulli(x, generator=g)


def _threshold(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    return (x > 0.5).to(x.dtype)


def _continuous(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    # Uniform dequantisation of 8-bit intensities: (byte + U) / 256 lies in (0, 1).
    u = torch.rand(x.shape, generator=g, dtype=x.dtype, device=x.device)
    return (torch.round(x * 255.0) + u) / 256.0


def _identity(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    return x


#: name -> transform(x in [0, 1], generator) applied to each batch.
BINARIZATIONS = {
    "dynamic": _dynamic,
    "threshold": _threshold,
    "continuous": _continuous,
    "none": _identity,
}


def validate_array(x, name: str = "x", unit_interval: bool = False) -> torch.Tensor:
    """Return ``x`` as a float32 tensor of shape [N, ...] or raise a :class:`DataError`.

    Checks: numeric dtype, at least 2 dimensions (datapoints first), at least one datapoint,
    every value finite and, if ``unit_interval``, within [0, 1].
    """
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu()
    else:
        try:
            arr = torch.as_tensor(np.asarray(x), device="cpu")
        except (TypeError, ValueError) as exc:
            raise DataError(f"{name}: expected a numeric array, got {type(x).__name__}") from exc
    if arr.dtype == torch.bool or not (arr.is_floating_point() or _is_int(arr)):
        raise DataError(f"{name}: expected a numeric (int or float) array, got dtype {arr.dtype}")
    if arr.dim() < 2:
        raise DataError(
            f"{name}: expected shape [num_datapoints, features...] (2+ dims), "
            f"got {tuple(arr.shape)}"
        )
    if arr.shape[0] == 0:
        raise DataError(f"{name}: the array holds no datapoints")
    if arr[0].numel() == 0:
        raise DataError(f"{name}: the datapoints hold no values (shape {tuple(arr.shape)})")
    arr = arr.to(torch.float32)
    bad = ~torch.isfinite(arr)
    if bad.any():
        idx = int(bad.reshape(arr.shape[0], -1).any(1).nonzero()[0])
        raise DataError(f"{name}: {int(bad.sum())} NaN/inf values (first in datapoint {idx})")
    if unit_interval and (arr.min() < 0 or arr.max() > 1):
        raise DataError(
            f"{name}: values must lie in [0, 1] for binarisation, found range "
            f"[{float(arr.min()):g}, {float(arr.max()):g}] (scale 8-bit images by 1/255)"
        )
    return arr.contiguous()


def _labels(y, n: int, name: str) -> torch.Tensor:
    """Integer labels [n] (int64) from an array of shape [n] or [n, 1], or a DataError."""
    arr = np.asarray(y)
    if arr.dtype.kind not in "iu":
        raise DataError(f"{name}: labels must be integers, got dtype {arr.dtype}")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(f"{name}: {n} datapoints need labels of shape [{n}], got shape {arr.shape}")
    return torch.as_tensor(arr.astype(np.int64), device="cpu")


#: the label of a datapoint whose label is hidden (semi-supervised data; see
#: :meth:`Dataset.keep_labels`)
UNLABELLED = -1


def _is_int(t: torch.Tensor) -> bool:
    return t.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass(frozen=True)
class Dataset:
    """Datapoints ``x`` ``[N, *event_shape]`` (float32), labels ``y`` [N] (int64) or None, and
    for ragged sequences x [N, T, D] a ``mask`` [N, T] (bool, True on real steps) or None.

    ``binarize`` names the transform applied per batch (see :data:`BINARIZATIONS`).
    """

    x: torch.Tensor = field(repr=False)
    y: torch.Tensor | None = field(default=None, repr=False)
    binarize: str = "none"
    name: str = "arrays"
    mask: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self):
        lookup(BINARIZATIONS, self.binarize, "binarisation", error=DataError)
        if self.y is not None and len(self.y) != len(self.x):
            raise DataError(f"{self.name}: {len(self.x)} datapoints but {len(self.y)} labels")
        if self.mask is not None and tuple(self.mask.shape) != tuple(self.x.shape[:2]):
            raise DataError(
                f"{self.name}: a sequence mask must have shape [N, T] = "
                f"{tuple(self.x.shape[:2])}, got {tuple(self.mask.shape)}"
            )

    @classmethod
    def from_arrays(
        cls, x, y=None, binarize: str = "none", name: str = "arrays", mask=None
    ) -> Dataset:
        """Validate user arrays (see :func:`validate_array`) and wrap them. ``mask`` [N, T]
        (bool or 0/1) marks the real steps of ragged sequences x [N, T, D]."""
        lookup(BINARIZATIONS, binarize, "binarisation", error=DataError)
        xt = validate_array(x, f"{name}: x", unit_interval=binarize != "none")
        yt = None
        if y is not None:
            yt = _labels(y, len(xt), name)
        mt = None
        if mask is not None:
            mt = torch.as_tensor(np.asarray(mask), device="cpu")
            if xt.dim() != 3:
                raise DataError(
                    f"{name}: a mask needs sequences x [N, T, D], got {tuple(xt.shape)}"
                )
            if not bool(((mt == 0) | (mt == 1)).all()):
                raise DataError(f"{name}: the mask must be boolean (0/1)")
            mt = mt.bool()
        return cls(xt, yt, binarize, name, mt)

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def x_dim(self) -> int:
        return int(np.prod(self.event_shape))

    def flat(self) -> Dataset:
        """The same data with each datapoint flattened to a vector (images -> [N, H*W])."""
        return replace(self, x=self.x.reshape(len(self), -1))

    def subset(self, n: int | None) -> Dataset:
        """The first ``n`` datapoints (all if ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return self._rows(slice(0, n), f":{n}")

    def _rows(self, rows: slice, tag: str) -> Dataset:
        """The datapoints ``rows`` (their labels and masks with them), named ``name[tag]``."""
        return replace(
            self,
            x=self.x[rows],
            y=None if self.y is None else self.y[rows],
            mask=None if self.mask is None else self.mask[rows],
            name=f"{self.name}[{tag}]",
        )

    def holdout(self, n: int | None) -> tuple[Dataset, Dataset | None]:
        """(the first ``len - n`` datapoints, the last ``n``): a validation split held out of
        a training set, as Pyro's ss-vae tutorial holds out MNIST's last 10,000 training
        images (``n`` None: the data and None).

        >>> import torch
        >>> from aevb.data import Dataset
        >>> rest, held = Dataset(torch.rand(10, 3)).holdout(4)
        >>> len(rest), len(held)
        (6, 4)
        """
        if n is None:
            return self, None
        if not 1 <= n < len(self):
            raise DataError(
                f"{self.name}: a validation split of {n} needs 1 <= n < {len(self)} "
                "(the training set's size)"
            )
        cut = len(self) - n
        return self._rows(slice(0, cut), f":{cut}"), self._rows(slice(cut, None), f"{cut}:")

    def keep_labels(self, n: int, seed: int = 0) -> Dataset:
        """The same data with only ``n`` labels kept, balanced over the classes (n // C per
        class, the remainder one each to the first classes), chosen at random by ``seed``;
        every other label becomes :data:`UNLABELLED` (-1). The semi-supervised setting of
        Kingma et al. (2014): ``keep_labels(100)`` keeps 10 labelled images per digit.

        >>> import torch
        >>> from aevb.data import Dataset
        >>> ds = Dataset(torch.rand(8, 3), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
        >>> kept = ds.keep_labels(4, seed=0).y
        >>> int((kept == 0).sum()), int((kept == 1).sum()), int((kept == -1).sum())
        (2, 2, 4)
        """
        if self.y is None:
            raise DataError(f"{self.name}: keeping {n} labels needs a labelled dataset")
        known = self.y[self.y != UNLABELLED]
        classes = torch.unique(known)
        if n < 1:
            raise DataError(f"{self.name}: the number of labels to keep must be >= 1, got {n}")
        if len(classes) == 0:
            raise DataError(f"{self.name}: the dataset holds no labels to keep")
        g = torch.Generator().manual_seed(seed)
        share = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
        kept = []
        for c, want in zip(classes.tolist(), share):
            where = (self.y == c).nonzero().flatten()
            if want > len(where):
                raise DataError(
                    f"{self.name}: {n} labels balanced over {len(classes)} classes need "
                    f"{want} of class {c}, but it has {len(where)} datapoints"
                )
            kept.append(where[torch.randperm(len(where), generator=g)[:want]])
        y = torch.full_like(self.y, UNLABELLED)
        chosen = torch.cat(kept)
        y[chosen] = self.y[chosen]
        return replace(self, y=y, name=f"{self.name}[{n} labels]")

    def without_labels(self) -> Dataset:
        """The same data with every label hidden (:data:`UNLABELLED`), e.g. to score log p(x)
        of a semi-supervised model with the label summed out."""
        n = len(self)
        return replace(self, y=torch.full((n,), UNLABELLED, dtype=torch.int64, device="cpu"))

    @property
    def num_labelled(self) -> int:
        """Datapoints whose label is known (0 without labels)."""
        return 0 if self.y is None else int((self.y != UNLABELLED).sum())

    def transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply this dataset's binarisation to a batch ``x`` (draws from ``generator``)."""
        return BINARIZATIONS[self.binarize](x, generator)

    def fixed(self, seed: int = 0) -> Dataset:
        """Binarise once with ``seed`` (the test-set protocol for stochastic binarisations)."""
        if self.binarize in ("none", "threshold"):
            return (
                self
                if self.binarize == "none"
                else replace(self, x=self.transform(self.x), binarize="none")
            )
        g = torch.Generator().manual_seed(seed)
        return replace(self, x=self.transform(self.x, g), binarize="none")

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        labels: bool = False,
        drop_last: bool = False,
        indexed: bool = False,
        device: torch.device | None = None,
    ) -> Iterator:
        """Yield argument tuples of minibatches, binarised per batch: ``(x,)``, ``(x, y)`` with
        ``labels``, and the sequence mask last where the dataset has one. With ``indexed``
        yield ``(index, args)``, ``index`` the datapoints' positions [B] on the CPU (for
        per-datapoint state such as MCEM's chains).

        With a ``device`` other than the CPU each batch is moved there (from pinned memory)
        and binarised there, from a generator on that device seeded by ``generator``; on the
        CPU the draws are those of ``generator`` itself."""
        n = len(self)
        if labels and self.y is None:
            raise DataError(f"{self.name}: this model needs labels but the dataset has none")
        order = torch.randperm(n, generator=generator, device="cpu") if shuffle else None
        away = device is not None and torch.device(device).type != "cpu"
        draws = generator
        if away and generator is not None:
            draws = torch.Generator(device=device)
            draws.manual_seed(int(torch.randint(2**62, (1,), generator=generator, device="cpu")))
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            if order is None:
                idx: slice | torch.Tensor = slice(start, min(start + batch_size, n))
            else:
                idx = order[start : start + batch_size]
            raw = [self.x[idx]]
            if labels:
                raw.append(self.y[idx])  # type: ignore[index]
            if self.mask is not None:
                raw.append(self.mask[idx])
            if away:
                raw = list(to_device(tuple(raw), torch.device(device)))  # type: ignore[arg-type]
            args = [self.transform(raw[0], draws), *raw[1:]]
            if indexed:
                where = (
                    idx if torch.is_tensor(idx) else torch.arange(idx.start, idx.stop, device="cpu")
                )
                yield where, tuple(args)
            else:
                yield tuple(args)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """Minibatches per epoch at ``batch_size`` (the last one partial unless ``drop_last``)."""
        n = len(self)
        return n // batch_size if drop_last and n >= batch_size else -(-n // batch_size)


def as_dataset(data) -> Dataset:
    """Accept a :class:`Dataset`, a tensor/array of datapoints, or an ``(x, y)`` pair."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        return Dataset.from_arrays(data[0], data[1])
    return Dataset.from_arrays(data)
