"""FSDP2: a model sharded with ``fully_shard`` block by block, and its state dicts for checkpoints.

``strategy="fsdp"`` shards each block the policy names (a set of module classes, or a
function of a module) and then the root, over a one-dimensional device mesh of all ranks.
Mixed precision goes through FSDP2's own policy: parameters are gathered in bf16 or fp16 for
compute and gradients are reduced in fp32. The state dicts come from
``torch.distributed.checkpoint.state_dict``: sharded (each rank its part, for a sharded
checkpoint) or full (gathered on rank 0, for one file).

torch's FSDP and checkpoint modules are imported inside the functions: importing them costs
over a second of start-up, which a DDP job should not pay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from handyjobs.trainer.errors import TrainerError
from handyjobs.trainer.models import is_sharded, unwrap
from handyjobs.trainer.state import ProcessState

#: What the FSDP strategy accepts as a wrapping policy.
Policy = type[nn.Module] | Iterable[type[nn.Module]] | Callable[[nn.Module], bool] | None

_PARAM_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def block_predicate(policy: Policy) -> Callable[[nn.Module], bool]:
    """Turn a policy (classes, one class, a function, or None) into 'shard this module?'."""
    if policy is None:
        return lambda module: False
    if isinstance(policy, type):
        classes: tuple[type[nn.Module], ...] = (policy,)
    elif callable(policy):
        return policy
    else:
        classes = tuple(policy)
    if not all(isinstance(c, type) and issubclass(c, nn.Module) for c in classes):
        raise TrainerError(
            f"fsdp policy {policy!r}: give module classes (e.g. {{Block}}) or a function "
            "that takes a module and returns True for each block to shard"
        )
    return lambda module: isinstance(module, classes)


def shard(
    model: nn.Module, state: ProcessState, precision: str, policy: Policy, **options: Any
) -> nn.Module:
    """Shard ``model`` with ``fully_shard``: each block the policy names, then the root.

    In one process there is nothing to shard over: the model is moved to the device only.
    ``options`` go to ``fully_shard`` (``reshard_after_forward=False``, an ``mp_policy``).
    """
    if is_sharded(model):
        return model
    model = model.to(state.device)
    if not state.distributed:
        return model
    # Imported only here: torch's FSDP costs over a second of import (see the module's doc).
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if "mp_policy" not in options and precision in _PARAM_DTYPES:
        options["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=_PARAM_DTYPES[precision], reduce_dtype=torch.float32
        )
    options.setdefault("mesh", init_device_mesh(state.device.type, (state.world_size,)))
    wanted = block_predicate(policy)
    # Innermost first: fully_shard must see a block's sharded children before the block.
    blocks = [m for m in model.modules() if m is not model and wanted(m)]
    for block in reversed(blocks):
        fully_shard(block, **options)
    fully_shard(model, **options)
    return model


def _options(full: bool, strict: bool = True, reading: bool = False) -> Any:
    """StateDictOptions: full (read into rank 0's CPU memory) or sharded (each rank its part)."""
    # Imported only here: torch's checkpoint modules cost over a second of import.
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full and reading, strict=strict)


def model_state(model: nn.Module, full: bool) -> dict[str, Any]:
    """The model's state dict by parameter name: full on rank 0 (empty elsewhere) or sharded."""
    # Imported only here: torch's checkpoint modules cost over a second of import.
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(unwrap(model), options=_options(full, reading=True))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, full: bool) -> Any:
    """The optimizer's state dict keyed by parameter names, full or sharded like the model's."""
    # Imported only here: torch's checkpoint modules cost over a second of import.
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(unwrap(model), optimizer, options=_options(full, reading=True))


def load_model_state(model: nn.Module, values: Mapping[str, Any], full: bool, strict: bool) -> None:
    """Copy a full or sharded state dict into a (maybe sharded) model."""
    # Imported only here: torch's checkpoint modules cost over a second of import.
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(unwrap(model), dict(values), options=_options(full, strict))


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, values: Any, full: bool
) -> None:
    """Copy a state dict keyed by parameter names into the optimizer of a (maybe sharded) model."""
    # Imported only here: torch's checkpoint modules cost over a second of import.
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(unwrap(model), optimizer, values, options=_options(full))


def keyed_by_name(optimizer_state_dict: Mapping[str, Any]) -> bool:
    """True for an optimizer state dict keyed by parameter names (FSDP's), not by position."""
    groups = optimizer_state_dict.get("param_groups") or []
    params = groups[0].get("params", []) if groups else []
    return bool(params) and isinstance(params[0], str)
