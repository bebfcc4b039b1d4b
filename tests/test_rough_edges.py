"""The rough edges a newcomer hit (issue 18), each as a user meets it: real tmux, real processes.

Each test is named after the edge's number in the issue and fails on the code before its fix.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios

from conftest import REPO, SLEEPER, Sandbox, log_of, show, wait_log, wait_state, wait_until

# A job that says who it is and logs one point of a metric.
SAY = """
import sys
from handyjobs import log_metrics
print("I am", sys.argv[1], flush=True)
log_metrics({"loss": float(sys.argv[2])}, step=int(sys.argv[3]))
"""


def test_1_a_reused_name_starts_afresh_and_the_removed_jobs_log_stays_reachable(
    sandbox: Sandbox,
) -> None:
    sandbox.write("say.py", SAY)
    sandbox.cli("start", "say.py", "--name", "r", "--", "old", "9.5", "7", check=True)
    wait_state(sandbox, "r", "succeeded")
    removed = sandbox.cli("rm", "r", check=True).stdout
    assert "`handyjobs logs r --removed`" in removed
    sandbox.cli("start", "say.py", "--name", "r", "--", "new", "0.25", "1", check=True)
    wait_state(sandbox, "r", "succeeded")
    # The new job's log, metrics and run headers are its own.
    log = log_of(sandbox, "r")
    assert "I am new" in log and "I am old" not in log
    assert log.count("run 1 of r started") == 1
    metrics = show(sandbox, "r")["metrics"]
    assert metrics["loss"]["last"] == 0.25 and metrics["loss"]["last_step"] == 1
    assert metrics["loss"]["best"] == 0.25
    table = sandbox.cli("list", "--metric", "loss", check=True).stdout.splitlines()
    assert table[1].split()[0] == "r" and "0.25" in table[1].split() and "9.5" not in table[1]
    # The removed job's log is still there, and `logs --removed` shows it.
    kept = sandbox.cli("logs", "r", "--removed", check=True).stdout
    assert "I am old" in kept and "I am new" not in kept
    # clean keeps them too, and says where.
    cleaned = sandbox.cli("clean", check=True).stdout
    assert "--removed" in cleaned and "(r)" in cleaned
    assert "I am new" in sandbox.cli("logs", "r", "--removed", check=True).stdout
    missing = sandbox.cli("logs", "nobody", "--removed")
    assert missing.returncode == 1 and "no removed job named nobody" in missing.stderr
    # A folder no record owns (left by an older release) is set aside, not inherited.
    stale = sandbox.home / "jobs" / "s"
    stale.mkdir(mode=0o700)
    (stale / "output.log").write_text("stale line\n")
    (stale / "metrics.jsonl").write_text(json.dumps({"step": 1, "values": {"loss": 5}}) + "\n")
    sandbox.cli("start", "say.py", "--name", "s", "--", "fresh", "1.0", "2", check=True)
    wait_state(sandbox, "s", "succeeded")
    assert "stale line" not in log_of(sandbox, "s")
    assert show(sandbox, "s")["metrics"]["loss"]["last_step"] == 2
    assert "stale line" in sandbox.cli("logs", "s", "--removed", check=True).stdout


def test_2_stopping_a_job_and_the_one_waiting_for_it_stops_both(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", SLEEPER)
    sandbox.cli("config", "parallel", "1", check=True)
    sandbox.cli("start", "sleep.py", "--name", "blocker", check=True)
    wait_state(sandbox, "blocker", "running")
    sandbox.cli("start", "sleep.py", "--name", "q1", check=True)
    sandbox.cli("start", "sleep.py", "--name", "q2", "--after", "q1", check=True)
    stopped = sandbox.cli("stop", "q1", "q2")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped queued job q1" in stopped.stdout and "stopped queued job q2" in stopped.stdout
    assert show(sandbox, "q1")["state"] == "stopped"
    assert show(sandbox, "q2")["state"] == "stopped"


def test_5_the_verdict_of_wait_is_its_output(sandbox: Sandbox) -> None:
    sandbox.write("exit.py", "import sys\nsys.exit(int(sys.argv[1]))\n")
    sandbox.cli("start", "exit.py", "--name", "w0", "--", "0", check=True)
    sandbox.cli("start", "exit.py", "--name", "w3", "--", "3", check=True)
    out = sandbox.root / "out.txt"
    # As a shell runs `handyjobs wait w0 w3 > out.txt`.
    with out.open("w") as sink:
        done = subprocess.run(
            [sys.executable, "-m", "handyjobs", "wait", "w0", "w3"],
            env={**sandbox.env, "PWD": str(sandbox.root)},
            cwd=sandbox.root,
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert done.returncode == 3 and done.stderr == ""
    assert sorted(out.read_text().splitlines()) == ["w0: succeeded (0)", "w3: failed (3)"]


def test_6_top_once_into_a_pipe_gets_the_whole_table(sandbox: Sandbox) -> None:
    sandbox.write(
        "long.py",
        "import os, time\nprint('epoch 1 ' + 'x' * 120 + ' END-OF-LINE', flush=True)\n"
        "while not os.path.exists('go'): time.sleep(0.05)\n",
    )
    sandbox.cli("start", "long.py", "--name", "wide-job-name", check=True)
    wait_log(sandbox, "wide-job-name", "END-OF-LINE")
    lines = sandbox.cli("top", "--once", check=True).stdout.splitlines()
    header = next(line for line in lines if line.startswith("NAME"))
    assert header.split() == [
        "NAME", "STATE", "DURATION", "CPU%", "RSS", "GPUS", "PROGRESS", "ETA", "LAST", "LINE"
    ]  # fmt: skip
    row = next(line for line in lines if line.startswith("wide-job-name"))
    assert row.endswith("x END-OF-LINE") and "running" in row
    assert all(line == line.rstrip() for line in lines)
    (sandbox.root / "go").touch()


def test_9_sweeps_and_default_names_are_numbered_per_script(sandbox: Sandbox) -> None:
    sandbox.write("train.py", "print('ok')\n")
    sandbox.write("eval.py", "print('ok')\n")
    first = sandbox.cli("sweep", "train.py", "--grid", "lr=1,2", check=True).stdout
    assert "sweep train-sweep: 2 jobs" in first
    # The same sweep again is numbered, as pueue and W&B number runs.
    again = sandbox.cli("sweep", "train.py", "--grid", "lr=1,2", check=True).stdout
    assert "sweep train-sweep2: 2 jobs" in again
    listed = sandbox.cli("list", "--group", "train-sweep2", check=True).stdout
    assert "train-2-lr1" in listed and "train-2-lr2" in listed
    # A prefix the user gave must be free: one line, exit 2.
    clash = sandbox.cli("sweep", "train.py", "--grid", "lr=1", "--prefix", "train")
    assert clash.returncode == 2 and "a job named train-lr1 exists" in clash.stderr
    # Default names count per script.
    names = []
    for script in ("train.py", "eval.py", "train.py", "eval.py"):
        out = sandbox.cli("start", script, "--cpu", check=True).stdout
        names.append(out.split()[1])
    assert names == ["train-1", "eval-1", "train-2", "eval-2"]
    sandbox.cli("wait", "--all", check=True)


# Rank 1 fails once both ranks are in the process group; rank 0 waits to be ended by torchrun.
RANK_FAILS = """
import time
import torch.distributed as dist
dist.init_process_group("gloo")
if dist.get_rank() == 1:
    raise ValueError("bad batch on rank one")
time.sleep(60)
"""


def test_10_a_failed_job_says_which_rank_failed_first_and_shows_its_error(
    sandbox: Sandbox,
) -> None:
    sandbox.write("fails.py", RANK_FAILS)
    sandbox.cli("start", "fails.py", "--cpu", "--nproc", "2", "--name", "f", check=True)
    # A job that never starts: its dependency fails.
    sandbox.cli("start", "fails.py", "--cpu", "--name", "never", "--after", "f", check=True)
    wait_state(sandbox, "f", "failed", timeout=120)
    wait_state(sandbox, "never", "failed")
    text = sandbox.cli("show", "f", check=True).stdout
    fields = [line.split(None, 1) for line in text.splitlines()]
    assert ["failed", "first  rank 1 (torchrun's first observed failure; `handyjobs logs f "
            "--rank 1`)"] in [[k, v] for k, v in fields if k == "failed"]  # fmt: skip
    error = text[text.index("\nerror ") + 1 :]
    assert "Traceback (most recent call last):" in error.splitlines()[0]
    assert "ValueError: bad batch on rank one" in error
    assert "[rank1]:" not in error
    merged = log_of(sandbox, "f")
    assert "[rank 1] ValueError: bad batch on rank one" in merged
    assert "[rank 1] [rank1]:" not in merged
    # STARTED has no time for a job that never started.
    rows = {line.split()[0]: line.split() for line in sandbox.cli("list").stdout.splitlines()}
    assert rows["never"][1] == "failed" and rows["never"][4] == "-"
    assert rows["f"][4] != "-"


def test_11_a_stop_that_needed_sigkill_says_so(sandbox: Sandbox) -> None:
    sandbox.write(
        "stubborn.py",
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring SIGTERM', flush=True)\ntime.sleep(120)\n",
    )
    sandbox.cli("start", "stubborn.py", "--name", "st", check=True)
    wait_log(sandbox, "st", "ignoring SIGTERM")
    out = sandbox.cli("stop", "st", "--timeout", "2", check=True).stdout
    assert out.strip() == (
        "stopped job st (1 process ended, by SIGKILL after 2s: SIGTERM did not end it)"
    )
    assert show(sandbox, "st")["state"] == "stopped"


def test_11_a_rotated_log_says_where_it_starts(sandbox: Sandbox) -> None:
    sandbox.write("chatty.py", "for i in range(4000):\n    print(f'line {i:05d} ' + 'x' * 40)\n")
    env = {"HANDYJOBS_LOG_MAX_MB": "0.05"}  # about 50 KB: the 200 KB it prints rotate twice
    sandbox.cli("start", "chatty.py", "--name", "ch", env=env, check=True)
    wait_state(sandbox, "ch", "succeeded")
    lines = log_of(sandbox, "ch").splitlines()
    assert lines[0].startswith("[handyjobs] (the log was rotated: what came before is gone")
    assert lines[1].startswith("line ") and lines[1] != "line 00000 " + "x" * 40
    assert "line 03999" in lines[-2]
    # A log that kept its start gets no such line.
    sandbox.cli("start", "chatty.py", "--name", "whole", check=True)
    wait_state(sandbox, "whole", "succeeded")
    assert log_of(sandbox, "whole").startswith("[handyjobs] run 1 of whole started")


def test_12_the_readmes_on_exit_example_works_as_typed_in_a_shell(sandbox: Sandbox) -> None:
    readme = (REPO / "docs" / "how-to" / "queue-and-sweeps.md").read_text()
    typed = next(
        line[2:] for line in readme.splitlines() if line.startswith("$ handyjobs start ask.py")
    )
    assert "--on-exit" in typed
    sandbox.write("ask.py", "print('asked')\n")
    # As the user's shell runs it: its quoting decides what reaches handyjobs.
    command = typed.replace("handyjobs", f"{sys.executable} -m handyjobs", 1)
    done = subprocess.run(
        ["bash", "-c", command],
        env={**sandbox.env, "PWD": str(sandbox.root)},
        cwd=sandbox.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    wait_state(sandbox, "ask", "succeeded")
    ended = sandbox.root / "ended.txt"
    wait_until(lambda: ended.exists() and ended.read_text().strip(), what="the on-exit line")
    assert ended.read_text() == "ask succeeded 0\n"


# Each rank says where it is, then waits to be stopped.
RANKS_WAIT = """
import os, time
print("rank", os.environ["RANK"], "at step 41", flush=True)
time.sleep(120)
"""


def test_3_a_stopped_job_reads_stopped_whatever_its_kind(sandbox: Sandbox) -> None:
    sandbox.write("ranks.py", RANKS_WAIT)
    sandbox.write(
        "plain.py", "import time\nprint('plain at step 7', flush=True)\ntime.sleep(120)\n"
    )
    shell = sandbox.write("loop.sh", "#!/bin/sh\necho 'shell at step 3'\nsleep 120\n")
    shell.chmod(0o755)
    sandbox.cli("start", "ranks.py", "--cpu", "--nproc", "2", "--name", "tr", check=True)
    sandbox.cli("start", "plain.py", "--name", "py", check=True)
    sandbox.cli("start", "--exec", "./loop.sh", "--name", "sh", check=True)
    wait_log(sandbox, "tr", "rank 1 at step 41", timeout=60)
    wait_log(sandbox, "py", "plain at step 7")
    wait_log(sandbox, "sh", "shell at step 3")
    sandbox.cli("stop", "tr", "py", "sh", "--timeout", "5", check=True)
    rows = {line.split()[0]: line.split() for line in sandbox.cli("list").stdout.splitlines()}
    for name in ("tr", "py", "sh"):
        assert rows[name][1] == "stopped" and rows[name][6] == "stopped", rows[name]
        assert sandbox.cli("show", name, check=True).stdout.splitlines()[2].split() == [
            "exit",
            "stopped",
        ]
    waited = sandbox.cli("wait", "tr", "py", "sh")
    assert sorted(waited.stdout.splitlines()) == ["py: stopped", "sh: stopped", "tr: stopped"]
    # top's last line is the job's, not torchrun's report of the signal it got.
    top = sandbox.cli("top", "--once", check=True).stdout.splitlines()
    row = next(line for line in top if line.startswith("tr "))
    assert row.endswith("at step 41"), row
    assert "SignalException" not in row


def test_4_the_jobs_terminal_is_the_callers_size_or_120_columns(sandbox: Sandbox) -> None:
    sandbox.write("size.py", "import os\nprint('size', *os.get_terminal_size(1), flush=True)\n")
    # No terminal here (a pipe): 120x40, not 200 columns of progress bar.
    sandbox.cli("start", "size.py", "--name", "piped", check=True)
    wait_state(sandbox, "piped", "succeeded")
    assert "size 120 40" in log_of(sandbox, "piped")
    # From a terminal of 90x30, the job gets 90x30.
    sandbox_env = {**sandbox.env, "PWD": str(sandbox.root)}
    pid, fd = pty.fork()
    if pid == 0:  # the child: a caller in a 90x30 terminal
        fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
        os.chdir(sandbox.root)
        argv = [sys.executable, "-m", "handyjobs", "start", "size.py", "--name", "tty"]
        try:
            os.execve(sys.executable, argv, sandbox_env)
        finally:
            os._exit(127)  # never back into the test runner
    wait_until(lambda: _drained(fd), what="the start from a terminal")
    os.waitpid(pid, 0)
    wait_state(sandbox, "tty", "succeeded")
    assert "size 90 30" in log_of(sandbox, "tty")


def _drained(fd: int) -> bool:
    """Read what the terminal's child wrote; True once it closed its side."""
    try:
        return not os.read(fd, 4096)
    except OSError:
        return True
