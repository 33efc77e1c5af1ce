"""Devices: which one a run uses, and the few helpers that keep every tensor on it.

``device`` is ``"cpu"`` (the default everywhere, so published figures stay reproducible),
``"cuda"`` / ``"cuda:N"`` (an NVIDIA GPU) or ``"auto"`` (CUDA when available, else the CPU).
Models, guides, minibatches, objectives, estimators and samplers all work on the device of
the tensors they are given: a module's parameters decide (:func:`device_of`), and new tensors
are made with ``x.new_zeros`` / ``torch.zeros_like`` / an explicit ``device=``.

Checkpoints are device-free (:func:`to_cpu` before saving, ``map_location="cpu"`` when
loading): a run trained on a GPU evaluates and resumes on a CPU and back.
"""

from __future__ import annotations

from typing import Any

import torch

from aevb.errors import ConfigError

#: the names a run may give; ``cuda:N`` for any N is accepted too
DEVICE_NAMES = ("cpu", "cuda", "auto")


def check_device_name(name: str) -> str:
    """``name`` if it is a device name a run may give (not whether it is present here)."""
    if name in DEVICE_NAMES:
        return name
    if name.startswith("cuda:") and name[5:].isdigit():
        return name
    raise ConfigError(f"invalid choice: {name!r} (choose from cpu, cuda, cuda:N, auto)")


def resolve_device(name: str | torch.device | None = "cpu") -> torch.device:
    """The :class:`torch.device` a run uses: ``auto`` picks CUDA when available; a CUDA
    device that is not there is a clear error."""
    if isinstance(name, torch.device):
        return name
    name = check_device_name(name or "cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {name!r}: this torch ({torch.__version__}) sees no CUDA GPU; use "
                "--device cpu, or install a CUDA build of torch (docs/gpu.rst: Running on a GPU)"
            )
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    return device


def device_of(*objs: Any, default: torch.device | str = "cpu") -> torch.device:
    """The device of the first parameter or buffer among ``objs`` (modules or tensors), else
    ``default``: where a model and guide live, so their data go there too."""
    for obj in objs:
        if isinstance(obj, torch.Tensor):
            return obj.device
        if isinstance(obj, torch.nn.Module):
            for param in obj.parameters():
                return param.device
            for buffer in obj.buffers():
                return buffer.device
    return torch.device(default)


def to_device(args: tuple, device: torch.device) -> tuple:
    """A minibatch's tensors on ``device`` (asynchronously from pinned memory on CUDA)."""
    if all(not isinstance(a, torch.Tensor) or a.device == device for a in args):
        return args
    cuda = device.type == "cuda"
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.device != device:
            if cuda and a.device.type == "cpu":
                a = a.pin_memory()
            a = a.to(device, non_blocking=cuda)
        out.append(a)
    return tuple(out)


def move(device: torch.device, *objs: Any) -> None:
    """Move every ``nn.Module`` among ``objs`` to ``device`` (in place)."""
    for obj in objs:
        if isinstance(obj, torch.nn.Module):
            obj.to(device)


def to_cpu(value: Any) -> Any:
    """``value`` (tensors in dicts, lists and tuples) with every tensor on the CPU, for a
    device-free checkpoint; CPU tensors are returned as they are, parameters stay
    parameters."""
    if isinstance(value, torch.Tensor):
        if value.device.type == "cpu":
            return value
        cpu = value.detach().cpu()
        if isinstance(value, torch.nn.Parameter):
            return torch.nn.Parameter(cpu, requires_grad=value.requires_grad)
        return cpu.requires_grad_(value.requires_grad)
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(v) for v in value)
    return value


def chunk_elements(device: torch.device, cpu_elements: int) -> int:
    """How many floats one vectorised chunk of an estimator (IS, AIS) may hold: on a CPU
    ``cpu_elements`` (sized to the caches); on a GPU a sixty-fourth of its free memory in
    float32 (a chunk keeps about a dozen tensors of that size alive), at least the CPU's."""
    if device.type != "cuda":
        return cpu_elements
    free, _ = torch.cuda.mem_get_info(device)
    return max(cpu_elements, free // (4 * 64))


def describe(device: torch.device) -> dict:
    """What ``config.json`` records of the device: its name and, for a GPU, the model."""
    info = {"device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def fork_devices(device: torch.device) -> list:
    """The CUDA devices :func:`torch.random.fork_rng` must cover besides the CPU."""
    return [device] if device.type == "cuda" else []


__all__ = [
    "DEVICE_NAMES",
    "check_device_name",
    "chunk_elements",
    "describe",
    "device_of",
    "fork_devices",
    "move",
    "resolve_device",
    "to_cpu",
    "to_device",
]
