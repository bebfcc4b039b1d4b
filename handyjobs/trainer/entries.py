"""What ``save`` is given, sorted: models, optimizers (with their model), state holders, values.

Also the check that ``load`` can read back every value: ``load`` reads with
``weights_only=True``, which refuses arbitrary Python objects, so ``save`` refuses them first,
in one line that says what to save instead, rather than writing a checkpoint nobody can load.
"""

from __future__ import annotations

import collections
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from handyjobs.trainer.errors import TrainerError
from handyjobs.trainer.models import unwrap

_PLAIN = (type(None), bool, int, float, str, bytes)
_CONTAINERS = (dict, list, tuple, collections.OrderedDict)


@dataclass
class Entries:
    """The objects of one ``save`` or ``load`` call, by kind."""

    modules: dict[str, nn.Module] = field(default_factory=dict)
    optimizers: dict[str, tuple[torch.optim.Optimizer, nn.Module | None]] = field(
        default_factory=dict
    )
    stateful: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


def sort(objects: Mapping[str, Any]) -> Entries:
    """Sort ``objects``; each optimizer is paired with the given model that owns its parameters."""
    entries = Entries()
    for name, value in objects.items():
        if isinstance(value, nn.Module):
            entries.modules[name] = value
        elif isinstance(value, torch.optim.Optimizer):
            entries.optimizers[name] = (value, None)
        elif callable(getattr(value, "state_dict", None)):
            entries.stateful[name] = value
        else:
            entries.values[name] = value
    owners = {
        id(param): module
        for module in entries.modules.values()
        for param in unwrap(module).parameters()
    }
    for name, (optimizer, _) in entries.optimizers.items():
        first = next((p for g in optimizer.param_groups for p in g["params"]), None)
        entries.optimizers[name] = (optimizer, owners.get(id(first)))
    return entries


def check_loadable(values: Mapping[str, Any]) -> None:
    """Refuse, naming the entry, any value that ``torch.load(weights_only=True)`` cannot read."""
    for name, value in values.items():
        bad = _unloadable(value)
        if bad is not None:
            kind = f"{type(bad).__module__}.{type(bad).__qualname__}"
            raise TrainerError(
                f"save: {name!r} holds a {kind}, which load cannot read back (checkpoints "
                f"load with weights_only=True); {_advice(bad)}"
            )


def _unloadable(value: Any) -> Any:
    """The first object inside ``value`` that weights-only loading refuses, or None."""
    kind = type(value)
    if kind in _PLAIN or kind in (torch.Tensor, nn.Parameter):
        return None
    if kind in _CONTAINERS:
        items = list(value.items()) if isinstance(value, dict) else [(None, v) for v in value]
        for key, item in items:
            bad = _unloadable(key) if key is not None else None
            if bad is None:
                bad = _unloadable(item)
            if bad is not None:
                return bad
        return None
    # Anything else (torch.Size, a dtype, a subclass of float, a user's class): ask torch.
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception:
        return value
    return None


def _advice(value: Any) -> str:
    """What to save instead of ``value``."""
    module = type(value).__module__.split(".")[0]
    if module == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return "save value.item() (a Python number) instead"
    if module == "numpy":
        return "save torch.from_numpy(value) or value.tolist() instead"
    if type(value).__name__ == "Namespace":
        return "save vars(args) (a dict) instead"
    if module == "pathlib":
        return "save str(path) instead"
    return (
        "save plain numbers, strings, lists, dicts and tensors instead, or allow the type with "
        "torch.serialization.add_safe_globals before both save and load"
    )
