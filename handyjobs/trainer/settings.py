"""The trainer's settings: config attributes (object, dataclass or dict) and torchrun's env."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from handyjobs.trainer.errors import TrainerError

#: Default for ``config.init_timeout`` (seconds): also the timeout of every collective, so it
#: must outlast a long evaluation that only rank 0 runs while the others wait in a barrier.
DEFAULT_INIT_TIMEOUT = 1800.0

#: Default for ``config.close_timeout`` (seconds): how long close() waits for the other ranks,
#: long enough for a final evaluation that only rank 0 runs.
DEFAULT_CLOSE_TIMEOUT = 300.0


def config_value(config: Any, name: str, default: Any = None) -> Any:
    """Read ``name`` from a dict, a dataclass or any object with attributes; None means unset."""
    if config is None:
        return default
    value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
    return default if value is None else value


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    """Read an integer set by torchrun, with a clear error when it is malformed."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise TrainerError(f"environment variable {name}={raw!r} is not an integer") from None
