"""Per-rank output: the wrapper around each rank, real torchrun with 2 processes on CPU."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SLEEPER, Sandbox, log_of, show, wait_log, wait_state, wait_until

from handyjobs.core.procs import is_running
from handyjobs.jobside.rank import LineForwarder

# Two ranks printing 200 lines each with print() under torchrun's `python -u`: each print is
# two writes (the text, then the newline). They meet first (a file each in the folder given
# as argument, when there is one) so that their prints overlap: on bare torchrun that merged
# lines in 8 runs of 10 (scripts/bench_ranks.py).
CHATTY = """
import os, sys, time
rank = os.environ["RANK"]
if len(sys.argv) > 1 and os.path.isdir(sys.argv[1]):
    open(os.path.join(sys.argv[1], "ready-" + rank), "w").close()
    while len(os.listdir(sys.argv[1])) < 2:
        time.sleep(0.0005)
for i in range(200):
    print(f"R{rank} L{i:03d} " + "abcdefghij" * 5)
"""
LINE = re.compile(r"R(\d) L(\d{3}) (abcdefghij){5}")


def expected(rank: int) -> list[str]:
    return [f"R{rank} L{i:03d} " + "abcdefghij" * 5 for i in range(200)]


def body(text: str) -> list[str]:
    """Lines of a log that are not handyjobs' own notes."""
    return [line for line in text.splitlines() if not line.startswith("[handyjobs]")]


def test_line_forwarder_writes_whole_tagged_lines(tmp_path: Path) -> None:
    r, w = os.pipe()
    forwarder = LineForwarder(1, w)
    for piece in (b"hel", b"lo\nwor", b"ld\n", b"10%\r50%", b"\r100%\n", b"\x1b[31mred\x1b[0m\n"):
        forwarder.feed(piece)
    forwarder.feed(b"no newline at the end")
    forwarder.flush()
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    assert out == (
        b"[rank 1] hello\n[rank 1] world\n[rank 1] 100%\n"
        b"[rank 1] \x1b[31mred\x1b[0m\n[rank 1] no newline at the end\n"
    )


def test_line_forwarder_survives_a_closed_terminal() -> None:
    r, w = os.pipe()
    os.close(r)
    forwarder = LineForwarder(0, w)
    forwarder.feed(b"nobody reads this\n")  # EPIPE: forwarding stops, the rank goes on
    assert forwarder.fd is None
    os.close(w)


@pytest.mark.timeout(300)
def test_ten_runs_of_two_ranks_never_merge_a_line(sandbox: Sandbox) -> None:
    sandbox.write("chatty.py", CHATTY)
    names = [f"c{i}" for i in range(10)]
    for name in names:
        meet = sandbox.root / f"meet-{name}"
        meet.mkdir()
        sandbox.cli(
            "start",
            "chatty.py",
            "--cpu",
            "--nproc",
            "2",
            "--name",
            name,
            "--",
            str(meet),
            check=True,
        )
    damaged = 0
    for name in names:
        rec = wait_state(sandbox, name, "succeeded", "failed", timeout=240)
        raw = Path(rec["log_path"]).read_text()
        assert rec["state"] == "succeeded", raw
        tagged = [line for line in raw.splitlines() if line.startswith("[rank ")]
        for rank in (0, 1):
            mine = [
                line[len(f"[rank {rank}] ") :]
                for line in tagged
                if line.startswith(f"[rank {rank}] ")
            ]
            assert mine == expected(rank), f"{name} rank {rank}"
        # no line anywhere holds pieces of two lines
        damaged += sum(1 for line in raw.splitlines() if len(re.findall(r"R\d L\d{3}", line)) > 1)
        assert body(sandbox.cli("logs", name, "--rank", "1", check=True).stdout) == expected(1)
        assert body(sandbox.cli("logs", name, "--rank", "0", check=True).stdout) == expected(0)
    assert damaged == 0


def test_views_of_a_two_rank_log_and_the_pane(sandbox: Sandbox) -> None:
    sandbox.write(
        "hold.py",
        CHATTY.replace("range(200)", "range(3)")
        + "import time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.05)\n",
    )
    flag = sandbox.root / "go"
    sandbox.cli(
        "start", "hold.py", "--cpu", "--nproc", "2", "--name", "v", "--", str(flag), check=True
    )
    wait_log(sandbox, "v", lambda log: log.count(" L002 ") == 2, 60, what="both ranks' lines")
    # The pane: rank 0 as a lone process would print it, rank 1 tagged, no line merged.
    pane = sandbox.tmux("capture-pane", "-p", "-J", "-t", "=v:").stdout.splitlines()
    assert expected(0)[:3] == [line for line in pane if line.startswith("R0 ")]
    assert [f"[rank 1] {line}" for line in expected(1)[:3]] == [
        line for line in pane if "R1 " in line
    ]
    flag.touch()
    wait_state(sandbox, "v", "succeeded")
    default = log_of(sandbox, "v").splitlines()
    assert [line for line in default if "R0 " in line] == expected(0)[:3]
    assert [line for line in default if "R1 " in line] == [f"[rank 1] {x}" for x in expected(1)[:3]]
    labelled = sandbox.cli("logs", "v", "--prefix", check=True).stdout.splitlines()
    assert [line for line in labelled if "R0 " in line] == [
        f"[rank 0] {x}" for x in expected(0)[:3]
    ]
    assert all(
        line.startswith(("[rank 0] ", "[rank 1] ", "[handyjobs] ", "[launcher] "))
        for line in labelled
    )
    raw = sandbox.cli("logs", "v", "--raw", check=True).stdout
    assert f"[rank 0] {expected(0)[0]}\n" in raw
    bad = sandbox.cli("logs", "v", "--rank", "2")
    assert bad.returncode == 2 and "ranks 0-1" in bad.stderr and bad.stderr.count("\n") == 1
    # the rank's own log notes when it started and how it ended
    own = sandbox.cli("logs", "v", "--rank", "1", check=True).stdout.splitlines()
    assert own[0].startswith("[handyjobs] run 1 rank 1 (local rank 1) started")
    assert own[-1].startswith("[handyjobs] rank 1 ended") and own[-1].endswith("exit code 0")


def test_a_rank_killed_by_a_signal_ends_its_wrapper_the_same_way(sandbox: Sandbox) -> None:
    sandbox.write(
        "sig.py",
        "import os, signal, time\nprint('up', flush=True)\n"
        "if os.environ['RANK'] == '1':\n    os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(60)\n",
    )
    sandbox.cli("start", "sig.py", "--cpu", "--nproc", "2", "--name", "sg", check=True)
    rec = wait_state(sandbox, "sg", "failed", "succeeded", timeout=120)
    assert rec["state"] == "failed"
    log = log_of(sandbox, "sg")
    assert "exitcode  : -15" in log  # torchrun saw the wrapper die of it
    # torchrun's report names the user's script, not handyjobs' wrapper
    assert re.search(r"^\S*sig\.py FAILED$", log, re.M), log
    assert "handyjobs.jobside.rank FAILED" not in log
    own = sandbox.cli("logs", "sg", "--rank", "1", check=True).stdout.splitlines()
    assert own[-1].endswith("signal 15")


def test_a_sigkilled_wrapper_leaves_no_worker_behind(sandbox: Sandbox) -> None:
    # Rank 1's worker ignores the hangup its terminal sends when the wrapper dies, and
    # SIGTERM: only the runner's end-of-run sweep (by marker, then SIGKILL) can end it.
    sandbox.write(
        "stubborn.py",
        "import os, signal, sys, time\n"
        "if os.environ['RANK'] == '1':\n"
        "    signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + SLEEPER,
    )
    sandbox.cli("start", "stubborn.py", "--cpu", "--nproc", "2", "--name", "k", check=True)
    wait_log(sandbox, "k", lambda log: log.count("pid ") == 2, 60, what="both ranks")
    worker = int(
        next(
            line
            for line in log_of(sandbox, "k").splitlines()
            if "rank 1" in line and "pid " in line
        )
        .split("pid ")[1]
        .split()[0]
    )
    wrapper = _parent(worker)
    assert "handyjobs.jobside.rank" in Path(f"/proc/{wrapper}/cmdline").read_text()
    os.kill(wrapper, signal.SIGKILL)
    rec = wait_state(sandbox, "k", "failed", "succeeded", "lost", timeout=120)
    assert rec["state"] == "failed"
    assert not is_running(worker)
    assert rec["runs"][-1]["leftovers"] >= 1  # the runner had to end it


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def test_one_process_jobs_run_bare_on_the_runners_terminal(sandbox: Sandbox) -> None:
    sandbox.write("one.py", "import sys, os\nprint('tty', sys.stdout.isatty(), os.getppid())\n")
    sandbox.cli("start", "one.py", "--name", "one", check=True)
    rec = wait_state(sandbox, "one", "succeeded")
    line = next(x for x in log_of(sandbox, "one").splitlines() if x.startswith("tty"))
    assert line.split()[1] == "True"
    assert int(line.split()[2]) == rec["runs"][-1]["pids"]["runner"]  # no wrapper between
    assert "handyjobs.jobside.rank" not in log_of(sandbox, "one")
    assert not list(Path(rec["log_path"]).parent.glob("rank-*.log"))
    assert sandbox.cli("logs", "one", "--rank", "0", check=True).stdout == log_of(sandbox, "one")


# Each rank notes when a SIGTERM reaches it and carries on "saving" for 8 s, as a trainer
# that got should_stop does.
SAVER = """
import os, signal, sys, time
out, rank = sys.argv[1], os.environ["RANK"]
got = []
def on_term(signum, frame):
    got.append(time.monotonic())
    with open(os.path.join(out, "term-" + rank), "a") as f:
        f.write(repr(time.monotonic()) + "\\n")
signal.signal(signal.SIGTERM, on_term)
print("pid", os.getpid(), "rank", rank, flush=True)
open(os.path.join(out, "ready-" + rank), "w").close()
while not got:
    time.sleep(0.05)
while time.monotonic() < got[0] + 8:
    time.sleep(0.05)
open(os.path.join(out, "saved-" + rank), "w").close()
"""


def test_a_stop_reaches_each_rank_once_however_late_torchruns_copy(sandbox: Sandbox) -> None:
    # `stop` signals every process of the run; torchrun passes its own copy to each rank's
    # wrapper when it gets to it, which on a loaded machine can be seconds later: a worker
    # must not get that late copy (a trainer takes a repeat after its window as "kill me").
    out = sandbox.root / "out"
    out.mkdir()
    sandbox.write("saver.py", SAVER)
    sandbox.cli("start", "saver.py", "--cpu", "--nproc", "2", "--name", "sv", "--", str(out),
                check=True)  # fmt: skip
    wait_until(lambda: all((out / f"ready-{r}").exists() for r in "01"), 90, what="ranks")
    workers = re.findall(r"^(?:\[rank 1\] )?pid (\d+) rank", log_of(sandbox, "sv"), re.M)
    assert len(workers) == 2, log_of(sandbox, "sv")
    wrappers = [_parent(int(pid)) for pid in workers]
    stopping = subprocess.Popen(
        [sys.executable, "-m", "handyjobs", "stop", "sv", "--timeout", "60"],
        env={**sandbox.env, "PWD": str(sandbox.root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_until(lambda: all((out / f"term-{r}").exists() for r in "01"), 30, what="the stop")
    time.sleep(4)
    for wrapper in wrappers:  # torchrun's copy, late
        with contextlib.suppress(ProcessLookupError):
            os.kill(wrapper, signal.SIGTERM)
    said, _ = stopping.communicate(timeout=90)
    assert stopping.returncode == 0, said
    assert show(sandbox, "sv")["state"] == "stopped"
    for rank in "01":
        assert (out / f"saved-{rank}").exists(), f"rank {rank} died before it saved"
        times = [float(x) for x in (out / f"term-{rank}").read_text().split()]
        assert max(times) - min(times) < 2, f"rank {rank} got a late copy: {times}"


COUNTER = """
import os, signal, sys, time
out, rank = sys.argv[1], os.environ["RANK"]
def on_usr2(signum, frame):
    with open(os.path.join(out, "usr2-" + rank), "a") as f:
        f.write("got\\n")
signal.signal(signal.SIGUSR2, on_usr2)
open(os.path.join(out, "ready-" + rank), "w").close()
while True:
    time.sleep(0.05)
"""


def test_kill_signals_each_rank_once(sandbox: Sandbox) -> None:
    # Each rank's wrapper would pass the signal on to its worker, which `kill` signals itself.
    out = sandbox.root / "out"
    out.mkdir()
    sandbox.write("counter.py", COUNTER)
    sandbox.cli("start", "counter.py", "--cpu", "--nproc", "2", "--name", "kk", "--", str(out),
                check=True)  # fmt: skip
    wait_until(lambda: all((out / f"ready-{r}").exists() for r in "01"), 90, what="ranks")
    said = sandbox.cli("kill", "kk", "--signal", "USR2", check=True).stdout
    assert said.startswith("sent SIGUSR2 to kk (")
    wait_until(lambda: all((out / f"usr2-{r}").exists() for r in "01"), 30, what="handlers")
    time.sleep(1)  # a second copy, if any, has arrived by now
    for rank in "01":
        assert (out / f"usr2-{rank}").read_text() == "got\n", f"rank {rank}"
    sandbox.cli("stop", "kk", "--timeout", "2", check=True)
