"""Models: onto the device and into DDP with the options the config names, and back out."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from handyjobs.trainer.settings import config_value
from handyjobs.trainer.state import ProcessState

_DDP_HAS_FORWARD_SYNC = (
    "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
)


def wrap(model: nn.Module, state: ProcessState, **options: Any) -> nn.Module:
    """Move ``model`` to the device and wrap it in DDP when distributed.

    ``options`` are DDP's own keyword arguments for this model (``find_unused_parameters=True``)
    and win over the config's. A model already sharded with FSDP2 (``fully_shard`` by hand)
    is returned as it is: it synchronises its own gradients, and DDP cannot wrap it.
    """
    config = state.config
    if is_sharded(model):
        return model
    model = model.to(state.device)
    if not state.synch:
        return model
    if config_value(config, "sync_batchnorm", False):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
    bucket_cap_mb = config_value(config, "bucket_cap_mb")
    kwargs: dict[str, Any] = {
        "device_ids": [state.device.index] if state.device.type == "cuda" else None,
        "find_unused_parameters": bool(config_value(config, "find_unused_parameters", False)),
        "static_graph": bool(config_value(config, "static_graph", False)),
        # Gradients live in DDP's buckets: one copy and one buffer fewer per step.
        "gradient_as_bucket_view": bool(config_value(config, "gradient_as_bucket_view", True)),
    }
    if bucket_cap_mb is None and state.device.type != "cuda":
        # Naming the cap (torch's own 25 MB) also drops DDP's small 1 MB first bucket.
        # That bucket lets GPUs overlap communication with the rest of backward; on CPU,
        # where gloo's thread competes with compute for the cores, one all-reduce fewer
        # per step measured 5-7% faster (scripts/bench_trainer.py, 2 gloo processes).
        bucket_cap_mb = 25.0
    if bucket_cap_mb is not None:
        kwargs["bucket_cap_mb"] = float(bucket_cap_mb)
    broadcast_buffers = config_value(config, "broadcast_buffers")
    if broadcast_buffers is not None:
        # torch 2.13 renamed it (and warns on the old name); older versions know only it.
        name = "forward_sync_buffers" if _DDP_HAS_FORWARD_SYNC else "broadcast_buffers"
        kwargs[name] = bool(broadcast_buffers)
    if "broadcast_buffers" in options and _DDP_HAS_FORWARD_SYNC:
        options["forward_sync_buffers"] = options.pop("broadcast_buffers")
    kwargs.update(options)
    return DistributedDataParallel(model, **kwargs)


def is_sharded(model: nn.Module) -> bool:
    """True when FSDP2 (``fully_shard``) manages ``model`` or one of its submodules."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is None:
        # Nothing can be sharded before torch's FSDP was imported; not importing it here
        # spares a DDP job over a second of start-up.
        return False
    return any(isinstance(module, fsdp.FSDPModule) for module in unwrap(model).modules())


def unwrap(model: nn.Module) -> nn.Module:
    """Return the user's own module from inside DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix that checkpoints saved from a DDP model (the seed's) carry."""
    keys = list(state)
    if keys and all(key.startswith("module.") for key in keys):
        return {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)
