"""``handyjobs config``: show or change the defaults in the state folder's config file."""

from __future__ import annotations

import json
import os
import sys

from handyjobs.cli.parse import Arg, Command, Parsed
from handyjobs.core import config, paths
from handyjobs.core.options import option
from handyjobs.errors import UsageError, printable


def _change(key: str | None, value: str | None, group: str | None, unset: bool) -> bool:
    """Set or unset a setting when asked; True when it did (and said so)."""
    root = paths.home()
    paths.check_home(root)
    whose = f" for group {group}" if group else ""
    if unset:
        if key is None or value is not None:
            raise UsageError("--unset takes the setting's name alone: config --unset parallel")
        config.update(paths.ensure_home(root), key, None, group)
        print(f"{key} unset{whose}")
        return True
    if value is None:
        return False
    assert key is not None
    cfg = config.update(paths.ensure_home(root), key, value, group)
    shown = cfg.group_parallel.get(group) if group else getattr(cfg, key)
    print(f"{key} = {shown}{whose}")
    return True


#: The environment variable that overrides each setting of the file.
ENV_OF = {
    "parallel": config.PARALLEL_ENV,
    "gpus": config.GPUS_ENV,
    "gpu_mem_threshold_mib": config.THRESHOLD_ENV,
    "on_exit": config.ON_EXIT_ENV,
}


def in_force(doc: dict[str, object]) -> dict[str, tuple[object, str]]:
    """Each setting's value in force for this shell, and where it comes from: its environment
    variable (which wins), the file, or the default (None)."""
    out: dict[str, tuple[object, str]] = {}
    for key in config.KEYS:
        env = os.environ.get(ENV_OF[key], "").strip()
        if env:
            out[key] = (env, ENV_OF[key])
        else:
            out[key] = (doc[key], "file" if doc[key] is not None else "default")
    return out


def _run(p: Parsed) -> None:
    key, value, group = p.text("key"), p.text("value"), p.text("group")
    if _change(key, value, group, p.flag("unset")):
        return
    root = paths.home()
    cfg = config.load(root)
    if key is not None and key not in config.KEYS:
        raise UsageError(f"unknown setting {key!r}; settings: {', '.join(config.KEYS)}")
    doc: dict[str, object] = {
        "parallel": cfg.parallel,
        "gpus": cfg.gpus,
        "gpu_mem_threshold_mib": cfg.gpu_mem_threshold_mib,
        "on_exit": cfg.on_exit,
        "groups": {name: {"parallel": n} for name, n in sorted(cfg.group_parallel.items())},
    }
    force = in_force(doc)
    if p.flag("as_json"):
        where = {k: {"value": v, "from": f} for k, (v, f) in force.items()}
        print(json.dumps({**doc, "in_force": where}, indent=2))
        return
    if key is not None:
        current = cfg.group_parallel.get(group) if group else force[key][0]
        text = "" if current is None else str(current)
        print(printable(text) if sys.stdout.isatty() else text)  # a script gets it as it is
        return
    rows = [(name, force[name], about) for name, about in config.KEYS.items()]
    width = max([12, *(len(str(v)) for _, (v, _f), _a in rows if v is not None)])
    for name, (setting, source), about in rows:
        # A value may hold control characters (an on_exit command): shown, never acted on.
        cell = "-" if setting is None else printable(str(setting))
        note = ""
        if source not in ("file", "default") and doc[name] is not None:
            note = f" (the file says {printable(str(doc[name]))})"
        print(f"{name:22} {cell:<{width}} {source:<20} {about}{note}")
    for name, n in sorted(cfg.group_parallel.items()):
        group_key = "parallel --group " + name
        print(f"{group_key:22} {n!s:<{width}} {'file':<20} jobs of group {name} at once")
    print(f"(file: {root / config.FILE}; environment variables win over it)")


COMMAND = Command(
    "config",
    "Show the settings, or set one: `handyjobs config parallel 2 [--group G]`.",
    _run,
    args=(
        Arg("key", "Setting: " + ", ".join(config.KEYS)),
        Arg("value", "New value."),
    ),
    options=(
        option("--group", "str", "GROUP", "With parallel: the limit of this group."),
        option("--unset", "flag", "", "Remove the setting."),
        option("--json", "flag", "", "JSON for scripts.", name="as_json"),
    ),
)
