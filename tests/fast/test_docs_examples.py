"""The documentation cannot drift: its examples check catches a changed output, every script
the pages run ships in examples/, and the command reference names every command and option."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def _load(path: Path) -> ModuleType:
    """A script of the repository (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


check = _load(REPO / "scripts" / "check_docs_examples.py")
reference = _load(REPO / "docs" / "hooks" / "cli_reference.py")


def test_an_output_that_drifted_is_caught_but_times_and_pids_are_not() -> None:
    """A changed word fails; another clock time, duration, pid or run id does not."""
    page = ["exp1  running  cpu   2      00:01:27  2.1s   train.py", "pids  main=10859 runner=1"]
    same = ["exp1  running  cpu  2  17:40:02  31.5s  train.py", "pids  main=3 runner=77"]
    drifted = ["exp1  failed  cpu  2  17:40:02  31.5s  train.py", "pids  main=3 runner=77"]
    assert check.matches(page, same)
    assert not check.matches(page, drifted)
    assert not check.matches(page, same[:1])  # a line gone is a drift too


def test_an_ellipsis_line_stands_for_any_lines_and_only_those() -> None:
    """``...`` matches progress redraws (none or many), not a changed line around them."""
    page = ["training on 2", "...", "epoch 1: loss 0.54"]
    assert check.matches(page, ["training on 2", "epoch 1: loss 0.54"])
    assert check.matches(page, ["training on 2", "bar 1/2", "bar 2/2", "epoch 1: loss 0.54"])
    assert not check.matches(page, ["training on 2", "bar", "epoch 1: loss 0.99"])


def test_the_comments_above_a_block_steer_it(tmp_path: Path) -> None:
    """skip, fresh, numbers and any-order apply to the next block only."""
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- check: skip needs a GPU -->\n```console\n$ nvidia-smi\nGPU 0\n```\n\n"
        "<!-- check: fresh -->\n<!-- check: any-order -->\n```console\n$ a\nx\ny\n$ b\n```\n\n"
        "```console\n$ c\n```\n",
        encoding="utf-8",
    )
    first, second, third = check.parse_page(page)
    assert first.skip == "needs a GPU" and first.steps == [("nvidia-smi", ["GPU 0"])]
    assert second.fresh and second.any_order and not second.skip
    assert second.steps == [("a", ["x", "y"]), ("b", [])]
    assert not (third.fresh or third.any_order or third.numbers or third.skip)


def test_every_script_the_pages_run_ships_in_examples() -> None:
    """A script started in a console block of the docs is a file in examples/ (unless the
    block shows it refused, as `start missing.py` is)."""
    started = re.compile(r"^\$ .*handyjobs (?:start|sweep) (?:.* )?([\w-]+\.py)\b")
    missing = set()
    for page in sorted((REPO / "docs").rglob("*.md")):
        for block in check.parse_page(page):
            for command, output in block.steps:
                found = started.match(f"$ {command}")
                refused = output[:1] and output[0].startswith("handyjobs: error:")
                if found and not refused and not (REPO / "examples" / found.group(1)).is_file():
                    missing.add(f"{page.relative_to(REPO)}: {found.group(1)}")
    assert not missing, sorted(missing)


def test_the_command_reference_names_every_command_and_option() -> None:
    """The generated page has a section per command and every flag each one declares."""
    from handyjobs.cli.commands import COMMANDS, command

    page = reference.reference_markdown()
    for name in COMMANDS:
        assert f"## `handyjobs {name}`" in page
        for opt in command(name).options:
            for flag in opt.flags:
                assert flag in page, (name, flag)
