"""Random streams: seeding per rank, and RNG states as plain values a checkpoint can hold."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch


def numpy_module() -> Any:
    """NumPy if it is installed (it is optional for the trainer), else None."""
    try:
        import numpy  # optional: the trainer runs without NumPy
    except ImportError:
        return None
    return numpy


def seed_everything(seed: int, rank: int) -> None:
    """Seed torch alike on every rank (same model init) and python/numpy per rank."""
    torch.manual_seed(seed)
    random.seed(seed + rank)
    numpy = numpy_module()
    if numpy is not None:
        numpy.random.seed((seed + rank) % 2**32)


def capture(device: torch.device) -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) RNG states, which differ across ranks.

    Python's and NumPy's states become lists of ints, which ``torch.load(weights_only=True)``
    accepts.
    """
    version, internal, gauss = random.getstate()
    rng: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": None,
        "torch": torch.get_rng_state(),
    }
    numpy = numpy_module()
    if numpy is not None:
        name, keys, pos, has_gauss, cached = numpy.random.get_state()
        rng["numpy"] = [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore(rng: Mapping[str, Any], device: torch.device) -> None:
    """Put back the states ``capture`` took; a CUDA state is skipped on a CPU run."""
    if rng.get("python") is not None:
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
    numpy = numpy_module()
    if numpy is not None and rng.get("numpy") is not None:
        name, keys, pos, has_gauss, cached = rng["numpy"]
        numpy.random.set_state(
            (name, numpy.asarray(keys, dtype=numpy.uint32), pos, has_gauss, cached)
        )
    if rng.get("torch") is not None:
        torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
