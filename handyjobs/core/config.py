"""Defaults in ``$HANDYJOBS_HOME/config.toml``, which environment variables override.

::

    parallel = 4                   # jobs running at once (all groups); unset: no limit
    gpus = "0,1,3"                 # the GPUs handyjobs may use      (HANDYJOBS_GPUS wins)
    gpu_mem_threshold_mib = 2048   # memory use that makes a GPU busy (HANDYJOBS_GPU_MEM_...)
    on_exit = "notify-send done"   # run when a job ends, unless --on-exit (HANDYJOBS_ON_EXIT)

    [groups.sweep-3]
    parallel = 2                   # at most 2 of this group at once

``handyjobs config KEY VALUE`` writes it (atomically, under the registry lock), so it never
has to be edited by hand. ``HANDYJOBS_PARALLEL`` overrides ``parallel`` for the process that
schedules.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from handyjobs.core import paths
from handyjobs.errors import UsageError, storage_error
from handyjobs.structs import field, frozen

TYPE_CHECKING = False  # typing's, without importing typing (see handyjobs.structs)
if TYPE_CHECKING:
    from typing import Any

    from handyjobs.core.booking import Limits

FILE = "config.toml"
PARALLEL_ENV = "HANDYJOBS_PARALLEL"
ON_EXIT_ENV = "HANDYJOBS_ON_EXIT"
GPUS_ENV = "HANDYJOBS_GPUS"
THRESHOLD_ENV = "HANDYJOBS_GPU_MEM_THRESHOLD_MIB"

#: Keys ``handyjobs config`` knows, with what they hold.
KEYS = {
    "parallel": "jobs running at once (0 or unset: no limit); with --group, for that group",
    "gpus": "the GPUs handyjobs may use, e.g. 0,1,3",
    "gpu_mem_threshold_mib": "memory in use (MiB) above which a GPU counts as busy",
    "on_exit": "a command run when a job ends, unless the job has --on-exit",
}
_GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@frozen
class Config:
    """The settings in the file (None where unset)."""

    parallel: int | None = None
    gpus: str | None = None
    gpu_mem_threshold_mib: int | None = None
    on_exit: str | None = None
    group_parallel: dict[str, int] = field(default_factory=dict)

    def limit(self, group: str | None, env: Mapping[str, str] | None = None) -> int | None:
        """The parallel limit for a group (None: the machine-wide one); None: no limit."""
        if group is not None:
            value = self.group_parallel.get(group)
            return value if value else None
        text = (os.environ if env is None else env).get(PARALLEL_ENV, "").strip()
        if text:
            if not text.isdigit():
                raise UsageError(f"{PARALLEL_ENV}={text!r}: give a whole number, or unset it")
            return int(text) or None
        return self.parallel or None

    def limits(self, env: Mapping[str, str] | None = None) -> Limits:
        """The parallel limits the scheduling pass applies."""
        from handyjobs.core.booking import (
            Limits,  # lazy: only when a config file is read (start-up)
        )

        return Limits(self.limit(None, env), dict(self.group_parallel))

    def env_defaults(self) -> dict[str, str]:
        """The settings that have an environment variable, as that variable would hold them."""
        out = {}
        if self.gpus is not None:
            out[GPUS_ENV] = self.gpus
        if self.gpu_mem_threshold_mib is not None:
            out[THRESHOLD_ENV] = str(self.gpu_mem_threshold_mib)
        if self.on_exit is not None:
            out[ON_EXIT_ENV] = self.on_exit
        return out


class ConfigError(UsageError):
    """The settings file cannot be read as settings: its path, and what is wrong with it."""

    def __init__(self, path: Path, detail: str, advice: str = "fix it or remove it") -> None:
        super().__init__(f"{path} is not valid ({detail}); {advice}")
        self.path, self.detail = path, detail


def _toml(text: str, path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib  # lazy: only when a config file is read (start-up)
    else:  # pragma: no cover - 3.10 only
        import tomli as tomllib  # lazy: only when a config file is read (start-up)
    try:
        doc: dict[str, Any] = tomllib.loads(text)
        return doc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"TOML: {exc}") from exc


def load(root: Path | None = None) -> Config:
    """The config file's settings; defaults when there is none."""
    path = (root or paths.home()) / FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config()
    except UnicodeDecodeError as exc:
        raise ConfigError(path, f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise storage_error(exc, "read the config") from exc
    return _settings(_toml(text, path), path)


def _settings(doc: dict[str, Any], path: Path) -> Config:
    """The settings a file's document holds; a value of the wrong type names the file."""
    try:
        groups = {
            str(name): int(table["parallel"])
            for name, table in (doc.get("groups") or {}).items()
            if isinstance(table, dict) and "parallel" in table
        }
        threshold = doc.get("gpu_mem_threshold_mib")
        return Config(
            parallel=None if doc.get("parallel") is None else int(doc["parallel"]),
            gpus=None if doc.get("gpus") is None else str(doc["gpus"]),
            gpu_mem_threshold_mib=None if threshold is None else int(threshold),
            on_exit=None if doc.get("on_exit") is None else str(doc["on_exit"]),
            group_parallel=groups,
        )
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ConfigError(path, f"a value has the wrong type: {exc}", "fix it") from exc


def check(key: str, value: str, group: str | None) -> Any:
    """Check a value given on the command line; return it as the file stores it."""
    try:
        value.encode()
    except UnicodeEncodeError:
        shown = ascii(os.fsencode(value))[2:-1]
        raise UsageError(f"{key} '{shown}' is not valid UTF-8; the settings file is text") from None
    if key not in KEYS:
        raise UsageError(f"unknown setting {key!r}; settings: {', '.join(KEYS)}")
    if group is not None:
        if key != "parallel":
            raise UsageError("--group goes with `parallel` only (a per-group limit)")
        if not _GROUP_RE.match(group):
            raise UsageError(f"invalid group name {group!r}: use letters, digits, _ and -")
    if key in ("parallel", "gpu_mem_threshold_mib"):
        if not value.isdigit():
            raise UsageError(f"{key} {value!r}: give a whole number (0 for no limit)")
        return int(value)
    if key == "gpus":
        from handyjobs.core.booking import (
            allowed_indices,  # lazy: only when a config file is read (start-up)
        )

        allowed = allowed_indices({GPUS_ENV: value})
        return ",".join(map(str, sorted(allowed or ())))
    try:
        if not shlex.split(value):
            raise ValueError("empty")
    except ValueError as exc:
        raise UsageError(f"on_exit {value!r}: not a command line ({exc})") from exc
    return value


def _quoted(value: Any) -> str:
    """A value as TOML: json.dumps quotes strings as TOML does, but leaves DEL raw, which
    TOML refuses in a string."""
    return json.dumps(value).replace("\x7f", "\\u007f")


def _render(doc: dict[str, Any]) -> str:
    """The file's text (flat keys, then one table per group); json.dumps quotes TOML strings."""
    lines = ["# handyjobs settings: `handyjobs config` writes this file."]
    for key in KEYS:
        if doc.get(key) is not None:
            lines.append(f"{key} = {_quoted(doc[key])}")
    for name, table in sorted((doc.get("groups") or {}).items()):
        if table:
            lines.append("")
            lines.append(f"[groups.{name}]")
            lines.extend(f"{k} = {_quoted(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def update(root: Path, key: str, value: str | None, group: str | None = None) -> Config:
    """Set (or, with ``value`` None, unset) a setting, under the registry lock."""
    from handyjobs.core import registry  # lazy: only when a config file is read (start-up)

    stored = None if value is None else check(key, value, group)
    if value is None and key not in KEYS:
        raise UsageError(f"unknown setting {key!r}; settings: {', '.join(KEYS)}")
    with registry.locked(root):
        path = root / FILE
        try:
            doc = _toml(path.read_text(encoding="utf-8"), path)
        except FileNotFoundError:
            doc = {}
        except UnicodeDecodeError as exc:
            raise ConfigError(path, f"not UTF-8: {exc.reason} at byte {exc.start}") from None
        except OSError as exc:
            raise storage_error(exc, "read the config") from exc
        _settings(doc, path)  # a file of wrong types is refused, not rewritten half-read
        if group is not None:
            table = doc.setdefault("groups", {}).setdefault(group, {})
            if stored is None:
                table.pop(key, None)
            else:
                table[key] = stored
        elif stored is None:
            doc.pop(key, None)
        else:
            doc[key] = stored
        text = _render(doc)
        if _toml(text, path) != doc:  # never write a file that reads back otherwise
            raise UsageError(f"{key} {value!r}: cannot be written to {path} as it is")
        try:
            paths.write_atomic(path, text.encode())
        except OSError as exc:
            raise storage_error(exc, "write the config") from exc
    return load(root)
