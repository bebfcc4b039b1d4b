"""``handyjobs config``: show or change the defaults in the state folder's config file."""

from __future__ import annotations

import json

from handyjobs.cli.parse import Arg, Command, Parsed
from handyjobs.core import config, paths
from handyjobs.core.options import option
from handyjobs.errors import UsageError


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


def _run(p: Parsed) -> None:
    key, value, group = p.text("key"), p.text("value"), p.text("group")
    if _change(key, value, group, p.flag("unset")):
        return
    root = paths.home()
    cfg = config.load(root)
    if key is not None and key not in config.KEYS:
        raise UsageError(f"unknown setting {key!r}; settings: {', '.join(config.KEYS)}")
    doc = {
        "parallel": cfg.parallel,
        "gpus": cfg.gpus,
        "gpu_mem_threshold_mib": cfg.gpu_mem_threshold_mib,
        "on_exit": cfg.on_exit,
        "groups": {name: {"parallel": n} for name, n in sorted(cfg.group_parallel.items())},
    }
    if p.flag("as_json"):
        print(json.dumps(doc, indent=2))
        return
    if key is not None:
        shown = cfg.group_parallel.get(group) if group else doc.get(key)
        print("" if shown is None else shown)
        return
    for name, about in config.KEYS.items():
        setting = doc[name]
        print(f"{name:22} {'-' if setting is None else setting:<12} {about}")
    for name, n in sorted(cfg.group_parallel.items()):
        print(f"{'parallel --group ' + name:22} {n:<12} jobs of group {name} at once")
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
