"""Which device a process trains on, checked against what CUDA can really do here.

The decisions are small pure functions of plain values (a device count, a capability tuple,
version strings), so they are tested on machines without a GPU; ``resolve_device`` gathers
those values from torch and the environment and applies them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from handyjobs.trainer.errors import TrainerError, TrainerWarning
from handyjobs.trainer.settings import config_value

#: Set by ``handyjobs start --gpus``: the nvidia-smi indices of the GPUs booked for the job.
GPU_IDS_ENV = "HANDYJOBS_GPU_IDS"


def visible_devices(env: Mapping[str, str]) -> str:
    """``CUDA_VISIBLE_DEVICES`` as a message shows it: quoted, or ``unset``."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    return "unset" if value is None else repr(value)


def cuda_index(
    requested: int | None,
    *,
    launched: bool,
    local_rank: int,
    count: int,
    source: str,
    visible: str,
) -> int:
    """The CUDA index to use: LOCAL_RANK under torchrun, else the one asked for; checked.

    Under torchrun each process owns the GPU of its local rank, so a fixed index in the config
    (the seed's ``'cuda:0'``) is ignored; in one process ``cuda:N`` is honoured. Either way an
    index beyond ``count`` is a TrainerError here rather than "invalid device ordinal" later.
    """
    if launched:
        if local_rank >= count:
            raise TrainerError(
                f"{source} picked cuda:{local_rank} for local rank {local_rank}, but only "
                f"{count} GPU(s) are visible (CUDA_VISIBLE_DEVICES={visible}). Start at most "
                f"{count} process(es) per node, e.g. `handyjobs start SCRIPT --gpus 0,1`."
            )
        return local_rank
    index = 0 if requested is None else requested
    if index >= count:
        usable = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise TrainerError(
            f"{source}='cuda:{index}', but this process sees {count} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={visible}); use {usable}, or make that GPU visible "
            "(`handyjobs start SCRIPT --gpus N` shows GPU N as cuda:0)."
        )
    return index


def booked_but_unusable(
    gpu_ids: str,
    *,
    torch_version: str,
    cuda_version: str | None,
    visible: str,
    count: int,
    reason: str = "",
) -> str:
    """The error for a job that handyjobs gave GPUs to, whose torch cannot use CUDA."""
    if cuda_version is None:
        why = "it is a CPU-only build (torch.version.cuda is None)"
        fix = (
            "Install a CUDA build of torch in the job's environment "
            "(https://pytorch.org/get-started/locally), or start the job with --cpu."
        )
    else:
        why = f"it was built for CUDA {cuda_version} and finds no usable GPU"
        fix = (
            f"Check with `nvidia-smi` that the driver supports CUDA {cuda_version} (or install "
            "a torch build for an older CUDA), or start the job with --cpu."
        )
    if reason:
        why += f" ({reason.strip().rstrip('.')})"
    return (
        f"handyjobs booked GPU(s) {gpu_ids} for this job ({GPU_IDS_ENV}={gpu_ids}), but "
        f"torch {torch_version} cannot use CUDA: {why}; CUDA_VISIBLE_DEVICES={visible}, "
        f"torch.cuda.device_count()={count}. {fix}"
    )


def bf16_advice(capability: tuple[int, int], name: str) -> str | None:
    """A warning for bf16 on a GPU older than Ampere (8.0), where bfloat16 is emulated; else None.

    ``torch.cuda.is_bf16_supported()`` counts emulation as support, so it cannot tell.
    """
    if capability >= (8, 0):
        return None
    major, minor = capability
    return (
        f"precision bf16 on {name} (compute capability {major}.{minor}): GPUs before Ampere "
        "(8.0) such as V100 and T4 emulate bfloat16, which is slow; use precision='fp16' "
        "(with a grad scaler) instead"
    )


def _cuda_available_with_reason() -> tuple[bool, str]:
    """``torch.cuda.is_available()``, and torch's own warning when it says why not."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    reasons = [str(w.message).splitlines()[0] for w in caught if "CUDA" in str(w.message)]
    return available, reasons[0] if reasons else ""


def _check_booking(env: Mapping[str, str], wants_cuda: bool, requested: Any, source: str) -> None:
    """Fail at once when handyjobs booked GPUs that this torch cannot use; warn on a CPU choice."""
    gpu_ids = env.get(GPU_IDS_ENV, "").strip()
    if not gpu_ids:
        return
    if not wants_cuda:
        warnings.warn(
            f"handyjobs booked GPU(s) {gpu_ids} for this job, but {source}={requested!r}: "
            "training on the CPU while the GPUs stay reserved. Start the job with --cpu to "
            "book none.",
            TrainerWarning,
            stacklevel=5,
        )
        return
    available, reason = _cuda_available_with_reason()
    if available:
        return
    count = torch.cuda.device_count() if torch.version.cuda is not None else 0
    raise TrainerError(
        booked_but_unusable(
            gpu_ids,
            torch_version=torch.__version__,
            cuda_version=torch.version.cuda,
            visible=visible_devices(env),
            count=count,
            reason=reason,
        )
    )


def resolve_device(
    config: Any, *, launched: bool, local_rank: int, env: Mapping[str, str] | None = None
) -> torch.device:
    """HANDYJOBS_DEVICE, else config.device, else cuda:LOCAL_RANK when CUDA works, else cpu."""
    env = os.environ if env is None else env
    from_env = env.get("HANDYJOBS_DEVICE", "").strip()
    requested = from_env or config_value(config, "device")
    source = "HANDYJOBS_DEVICE" if from_env else "config.device"
    automatic = requested is None or str(requested) == "auto"
    device: torch.device | None = None
    if not automatic:
        try:
            device = torch.device(requested)
        except (RuntimeError, TypeError) as exc:
            raise TrainerError(
                f"{source}={requested!r} is not a device torch knows; use 'cpu', 'cuda' or 'cuda:N'"
            ) from exc
    _check_booking(
        env, automatic or (device is not None and device.type == "cuda"), requested, source
    )
    if device is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        device, source = torch.device("cuda"), "the automatic choice"
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise TrainerError(
            f"{source}={requested!r}, but torch {torch.__version__} sees no CUDA GPU. "
            "Set device='cpu' (or HANDYJOBS_DEVICE=cpu), or start the job with "
            "`handyjobs start SCRIPT --cpu` on this machine."
        )
    index = cuda_index(
        device.index,
        launched=launched,
        local_rank=local_rank,
        count=torch.cuda.device_count(),
        source=source,
        visible=visible_devices(env),
    )
    return torch.device("cuda", index)
