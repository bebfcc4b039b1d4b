"""``handyjobs config``: show or change the defaults in the state folder's config file."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from handyjobs.core import config, paths
from handyjobs.errors import UsageError


def config_(
    key: Annotated[str | None, typer.Argument(help="Setting: " + ", ".join(config.KEYS))] = None,
    value: Annotated[str | None, typer.Argument(help="New value.")] = None,
    group: Annotated[
        str | None, typer.Option(help="With parallel: the limit of this group.")
    ] = None,
    unset: Annotated[bool, typer.Option("--unset", help="Remove the setting.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """Show the settings, or set one: `handyjobs config parallel 2 [--group G]`."""
    root = paths.home()
    paths.check_home(root)
    whose = f" for group {group}" if group else ""
    if unset:
        if key is None or value is not None:
            raise UsageError("--unset takes the setting's name alone: config --unset parallel")
        config.update(paths.ensure_home(root), key, None, group)
        print(f"{key} unset{whose}")
        return
    if value is not None:
        assert key is not None
        cfg = config.update(paths.ensure_home(root), key, value, group)
        shown = cfg.group_parallel.get(group) if group else getattr(cfg, key)
        print(f"{key} = {shown}{whose}")
        return
    else:
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
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    if key is not None and value is None and not unset:
        shown = cfg.group_parallel.get(group) if group else doc.get(key)
        print("" if shown is None else shown)
        return
    for name, about in config.KEYS.items():
        shown = doc[name]
        print(f"{name:22} {'-' if shown is None else shown:<12} {about}")
    for name, n in sorted(cfg.group_parallel.items()):
        print(f"{'parallel --group ' + name:22} {n:<12} jobs of group {name} at once")
    print(f"(file: {root / config.FILE}; environment variables win over it)")
