"""Run every console block of the README, the tutorial and how-to pages; compare what they print.

Each page runs in a sandbox of its own: a fresh home (so the state folder is
``~/.local/state/handyjobs`` as the pages show it), a project folder ``~/proj`` holding a copy
of ``examples/``, and a tmux socket of its own; no page sees another's leftovers, and a
``<!-- check: fresh -->`` comment starts a new sandbox inside a page. A line ``$ CMD`` is run
with bash in ``~/proj``; the lines up to the next ``$`` are what it must print (stdout and
stderr together). Before comparing, times, durations, pids, ids, ports and memory figures
become placeholders, runs of blanks become one, and a line ``...`` stands for any lines.
A command that only reads (``list``, ``show``, ``logs``, ``gpus``, ``top``, ``plot``, ``cat``)
is run again until it matches or 30 s pass, so a page need not race its own jobs.

Comments right above a block steer it: ``<!-- check: skip REASON -->`` (not run: a GPU, a
Slurm cluster, a terminal), ``<!-- check: fresh -->``. ``$ export K=V`` sets a variable for
the page's next commands (``~`` is the sandbox's home). ``<!-- check: numbers -->`` makes
every number of a block a placeholder (figures that vary from run to run), and
``<!-- check: any-order -->`` lets its lines come in any order (jobs that end together).

Usage: ``scripts/check_docs_examples.py [PAGE...] [--update] [-j N] [-v]``; exit 0 when every block
matches, 1 with a diff of each that does not. ``--update`` writes what ran into the pages
(read the diff before committing it).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The pages whose console blocks run: the README's, the tutorial and the how-to guides.
PAGE_GLOBS = ("README.md", "docs/tutorial/*.md", "docs/how-to/*.md")
#: Commands that only read: run again until they match (their jobs may still be getting there).
READERS = re.compile(r"^(cat |handyjobs (list|show|logs|gpus|top|plot|config)\b)")
RETRY_S = 30.0
COMMAND_TIMEOUT_S = 120.0
NUMBER = re.compile(r"\d+(\.\d+)?")
DIRECTIVE = re.compile(r"^<!--\s*check:\s*(\w+)(?:-order)?\s*(.*?)\s*-->$")

#: What differs from run to run, replaced in both the page and the output before comparing.
PLACEHOLDERS = (
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"), "<TIME>"),
    (re.compile(r"\b\d\d:\d\d:\d\d\b"), "<CLOCK>"),
    (re.compile(r"\b\d+:\d\d:\d\d\b"), "<CLOCK>"),
    (re.compile(r"\b\d+(\.\d+)?(ms|s|m|h)\b"), "<DUR>"),
    (re.compile(r"\b(pid|main=|runner=|pid=)\s?\d+"), r"\1<PID>"),
    (re.compile(r"\b[0-9a-f]{12}\b"), "<ID>"),
    (re.compile(r"(localhost|127\.0\.0\.1):\d+"), r"\1:<PORT>"),
    (re.compile(r"\b\d+(\.\d+)? ?(MiB|GiB|KiB|MB|GB)\b"), "<SIZE>"),
    (re.compile(r"(_bytes\"|_s\"): [\d.]+"), r"\1: <N>"),
    (re.compile(r"\(\d+ looks"), "(<N> looks"),
)


@dataclass
class Block:
    """One console block: where it is, its commands and what each prints."""

    page: Path
    line: int
    steps: list[tuple[str, list[str]]]
    skip: str = ""
    fresh: bool = False
    #: Every number is a placeholder (figures that vary, such as a byte count of redraws).
    numbers: bool = False
    #: Lines may come in any order (jobs that end at the same moment).
    any_order: bool = False


@dataclass
class Sandbox:
    """A home, a project folder and a tmux socket of their own."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    status: int = 0

    @property
    def home(self) -> Path:
        """The sandbox's home (``~`` on the pages)."""
        return self.root / "home"

    @property
    def proj(self) -> Path:
        """Where the commands run (``~/proj``)."""
        return self.home / "proj"


def parse_page(page: Path) -> list[Block]:
    """Every ``console`` block of a page, with the check comments right above it."""
    blocks: list[Block] = []
    lines = page.read_text(encoding="utf-8").split("\n")
    pending: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        found = DIRECTIVE.match(line)
        if found:
            pending[found.group(1)] = found.group(2)
        elif line == "```console":
            end = lines.index("```", i + 1)
            block = Block(page, i + 1, _steps(lines[i + 1 : end]))
            block.skip = pending.get("skip", "")
            block.fresh = "fresh" in pending
            block.numbers = "numbers" in pending
            block.any_order = "any" in pending
            blocks.append(block)
            pending, i = {}, end
        elif line and not line.startswith("<!--"):
            pending = {}
        i += 1
    return blocks


def _steps(body: list[str]) -> list[tuple[str, list[str]]]:
    """A block's commands (``$ CMD``) and the lines each prints."""
    steps: list[tuple[str, list[str]]] = []
    for line in body:
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    return steps


def normalize(lines: list[str], numbers: bool = False) -> list[str]:
    """Lines with placeholders for what changes between runs, blanks collapsed."""
    out = []
    for line in lines:
        for pattern, repl in PLACEHOLDERS:
            line = pattern.sub(repl, line)
        if numbers:
            line = NUMBER.sub("<N>", line)
        out.append(" ".join(line.split()))
    while out and not out[-1]:
        out.pop()
    return out


def matches(
    expected: list[str], actual: list[str], numbers: bool = False, anyhow: bool = False
) -> bool:
    """True when the output fits the page's lines (``...`` matching any lines; with
    ``anyhow``, the same lines in any order)."""
    exp, act = normalize(expected, numbers), normalize(actual, numbers)
    if anyhow:
        exp, act = sorted(exp), sorted(act)

    def fit(i: int, j: int) -> bool:
        if i == len(exp):
            return j == len(act)
        if exp[i] == "...":
            return any(fit(i + 1, k) for k in range(j, len(act) + 1))
        return j < len(act) and exp[i] == act[j] and fit(i + 1, j + 1)

    return fit(0, 0)


def new_sandbox() -> Sandbox:
    """A fresh home with ``~/proj`` (the examples, and the project's virtualenv as ``.venv``)."""
    box = Sandbox(Path(tempfile.mkdtemp(prefix="hj-docs-")))
    shutil.copytree(ROOT / "examples", box.proj)
    venv = Path(sys.prefix)
    (box.proj / ".venv").symlink_to(venv)
    keep = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TZ", "USER")}
    box.env = {
        **keep,
        "HOME": str(box.home),
        "PATH": f"{box.proj / '.venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HANDYJOBS_TMUX_SOCKET": f"hj-docs-{os.getpid()}-{box.root.name}",
        "NO_COLOR": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    box.env.setdefault("LANG", "C.UTF-8")
    return box


def close_sandbox(box: Sandbox) -> None:
    """Stop what the page left running, end its tmux server, remove its folder."""
    sock = box.env["HANDYJOBS_TMUX_SOCKET"]
    for argv in (
        ["handyjobs", "stop", "--all", "--timeout", "2"],
        ["tmux", "-L", sock, "kill-server"],
    ):
        subprocess.run(
            argv, env=box.env, cwd=box.proj, capture_output=True, timeout=60, check=False
        )
    shutil.rmtree(box.root, ignore_errors=True)


def run_step(box: Sandbox, command: str) -> list[str]:
    """Run one ``$`` line in the sandbox; its output as the page shows it (home as ``~``)."""
    if command.startswith("export ") and "=" in command:
        key, _, value = command[len("export ") :].partition("=")
        box.env[key] = value.strip("'\"").replace("~", str(box.home))
        return []
    # `echo $?` on the next line reads this command's status, as in one shell.
    script = f"(exit {box.status}); {command}"
    try:
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=box.proj,
            env=box.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        box.status = 124
        return [f"(did not end within {COMMAND_TIMEOUT_S:g} s)"]
    box.status = done.returncode
    text = done.stdout.decode("utf-8", "replace")
    text = text.replace(str(box.home), "~").replace(str(Path(sys.prefix)), "~/proj/.venv")
    return text.rstrip("\n").split("\n") if text.strip() else []


def check_step(box: Sandbox, command: str, expected: list[str], block: Block) -> list[str]:
    """Run a step, again while it is a reader that does not match yet; what it printed."""
    deadline = time.monotonic() + RETRY_S
    while True:
        actual = run_step(box, command)
        fits = matches(expected, actual, block.numbers, block.any_order)
        if fits or not READERS.match(command) or time.monotonic() > deadline:
            return actual
        time.sleep(0.5)  # a reader polled with a deadline: its jobs are still getting there


@dataclass
class PageResult:
    """What one page's run found: the failures (as diffs), blocks skipped, blocks rewritten."""

    failures: list[str] = field(default_factory=list)
    skipped: int = 0
    ran: int = 0
    rewritten: dict[int, list[str]] = field(default_factory=dict)


def run_block(box: Sandbox, block: Block, result: PageResult, update: bool) -> None:
    """Run a block's steps in order; a mismatch is recorded as a diff and the block goes on."""
    body: list[str] = []
    for command, expected in block.steps:
        # --update takes the first output: a retry would walk past the state the page shows.
        actual = run_step(box, command) if update else check_step(box, command, expected, block)
        same = matches(expected, actual, block.numbers, block.any_order)
        # --update keeps the page's lines where they match (their `...` and times stay).
        body += [f"$ {command}", *(expected if same else actual)]
        if not same:
            where = f"{block.page.relative_to(ROOT)}:{block.line}: $ {command}"
            diff = difflib.unified_diff(expected, actual, "page", "ran", lineterm="", n=2)
            result.failures.append("\n".join([where, *diff]))
    result.rewritten[block.line] = body
    result.ran += 1


def run_page(page: Path, verbose: bool, update: bool) -> PageResult:
    """Every block of a page in a sandbox of its own (a new one where a block says fresh)."""
    result = PageResult()
    box = new_sandbox()
    try:
        for block in parse_page(page):
            if block.skip:
                result.skipped += 1
                continue
            if block.fresh:
                close_sandbox(box)
                box = new_sandbox()
            started = time.monotonic()
            run_block(box, block, result, update)
            if verbose:
                took = time.monotonic() - started
                print(f"  {page.relative_to(ROOT)}:{block.line}  {took:.1f}s", flush=True)
    finally:
        close_sandbox(box)
    return result


def rewrite(page: Path, result: PageResult) -> None:
    """Put what each block printed into the page (``--update``), bottom block first."""
    lines = page.read_text(encoding="utf-8").split("\n")
    for start in sorted(result.rewritten, reverse=True):
        end = lines.index("```", start)
        lines[start:end] = result.rewritten[start]
    page.write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Check the pages named (default: the tutorial and how-tos); 1 when any block differs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", type=Path)
    parser.add_argument("--update", action="store_true", help="write the output into the pages")
    parser.add_argument("-j", "--jobs", type=int, default=3, help="pages run at once (3)")
    parser.add_argument("-v", "--verbose", action="store_true", help="time each block")
    args = parser.parse_args(argv)
    pages = [p.resolve() for p in args.pages] or sorted(
        p for pattern in PAGE_GLOBS for p in ROOT.glob(pattern)
    )
    if shutil.which("tmux") is None:
        print("check_docs_examples: tmux is not installed; the examples need it", file=sys.stderr)
        return 1
    started, failures, ran, skipped = time.monotonic(), 0, 0, 0
    # Pages are independent (a sandbox each): a few at once, as their jobs mostly wait.
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        results = pool.map(lambda page: run_page(page, args.verbose, args.update), pages)
        for page, result in zip(pages, results, strict=True):
            ran, skipped = ran + result.ran, skipped + result.skipped
            for failure in result.failures:
                print(failure, end="\n\n")
            failures += len(result.failures)
            if args.update:
                rewrite(page, result)
    took = time.monotonic() - started
    summary = f"{ran} blocks ran, {skipped} skipped, {failures} steps differ ({took:.0f}s)"
    print(f"docs examples: {summary}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
