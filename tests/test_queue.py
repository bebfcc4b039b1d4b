"""The queue end to end: any command, parallel limits, dependencies, groups, sweeps, send,
on-exit hooks, shell completion. Real tmux, real processes; GPUs from the fake seam."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import SLEEPER, Sandbox, log_of, max_overlap, show, wait_log, wait_state, wait_until

# A job that notes when it started and ended (wall clock), so overlap and order can be checked.
STAMPED = """
import json, os, sys, time
out = os.environ["STAMPS"]
start = time.time()
time.sleep(float(os.environ.get("HOLD", "1.0")))
with open(out, "a") as f:
    f.write(json.dumps({"job": os.environ["HANDYJOBS_JOB"], "start": start, "end": time.time(),
                        "args": sys.argv[1:], "lr": os.environ.get("HANDYJOBS_PARAM_LR"),
                        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")
"""


def _stamps(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_sweep_of_four_with_parallel_two_runs_two_at_a_time_in_order(sandbox: Sandbox) -> None:
    sandbox.write("job.py", STAMPED)
    stamps = sandbox.root / "stamps.jsonl"
    env = {"STAMPS": str(stamps)}
    sandbox.cli("config", "parallel", "2", check=True)
    out = sandbox.cli(
        "sweep", "job.py", "--grid", "lr=1e-3,3e-4", "--grid", "bs=32,64", "--", "--epochs", "10",
        env=env,
        check=True,
    ).stdout
    assert "sweep job-sweep: 4 jobs" in out
    names = ["job-lr1e-3-bs32", "job-lr1e-3-bs64", "job-lr3e-4-bs32", "job-lr3e-4-bs64"]
    listed = sandbox.cli("list", "--group", "job-sweep", check=True).stdout
    assert "PARAMS" in listed and "lr=3e-4 bs=64" in listed
    proc = sandbox.cli("wait", "--group", "job-sweep", timeout=120)
    assert proc.returncode == 0, proc.stderr
    runs = _stamps(stamps)
    assert sorted(r["job"] for r in runs) == names
    assert max_overlap(runs) == 2
    order = [r["job"] for r in sorted(runs, key=lambda r: r["start"])]
    # FIFO: the first two start first, the last two after (in the grid's order within each).
    assert set(order[:2]) == set(names[:2]) and set(order[2:]) == set(names[2:])
    first = next(r for r in runs if r["job"] == names[0])
    assert first["args"] == ["--lr=1e-3", "--bs=32", "--epochs", "10"] and first["lr"] == "1e-3"


def test_sweep_parallel_k_runs_k_of_its_jobs_at_once_as_the_groups_limit(
    sandbox: Sandbox,
) -> None:
    sandbox.write("job.py", STAMPED)
    stamps = sandbox.root / "stamps.jsonl"
    env = {"STAMPS": str(stamps), "HOLD": "0.5"}
    args = ("sweep", "job.py", "--grid", "lr=1,2,3,4", "--cpu", "--group", "k2")
    sandbox.cli(*args, "--parallel", "2", env=env, check=True)
    # The same limit as `handyjobs config parallel 2 --group k2`, kept for the group.
    assert sandbox.cli("config", "parallel", "--group", "k2", check=True).stdout == "2\n"
    proc = sandbox.cli("wait", "--group", "k2", timeout=120)
    assert proc.returncode == 0, proc.stderr
    runs = _stamps(stamps)
    assert sorted(r["lr"] for r in runs) == ["1", "2", "3", "4"]
    assert max_overlap(runs) == 2


def test_gpu_sweep_of_six_over_four_fake_gpus_runs_four_then_two(sandbox: Sandbox) -> None:
    fake = sandbox.root / "gpus.json"
    gpu = {"name": "NVIDIA A100-SXM4-80GB", "memory_used_mib": 4, "memory_total_mib": 81920}
    fake.write_text(json.dumps({"gpus": [{"index": i, **gpu} for i in range(4)]}))
    sandbox.write("job.py", STAMPED)
    stamps = sandbox.root / "stamps.jsonl"
    env = {"STAMPS": str(stamps), "HANDYJOBS_FAKE_GPUS": str(fake), "HOLD": "2.0"}
    grid = ["--grid", "seed=1,2,3,4,5,6"]
    sandbox.cli("sweep", "job.py", "--ngpus", "1", *grid, env=env, check=True)
    assert sandbox.cli("wait", "--group", "job-sweep", env=env, timeout=120).returncode == 0
    runs = _stamps(stamps)
    assert len(runs) == 6 and max_overlap(runs) == 4
    for a in runs:  # never two jobs on one GPU at the same time
        for b in runs:
            if a is not b and a["gpus"] == b["gpus"]:
                assert a["end"] <= b["start"] or b["end"] <= a["start"]
    assert {r["gpus"] for r in runs} == {"0", "1", "2", "3"}


def test_a_failed_dependency_fails_the_job_which_never_starts(sandbox: Sandbox) -> None:
    sandbox.write(
        "exit.py",
        "import os, sys, time\nwhile not os.path.exists('go'): time.sleep(0.05)\n"
        "sys.exit(int(sys.argv[1]))\n",
    )
    sandbox.write("never.py", "open('ran', 'w').write('yes')\n")
    sandbox.cli("start", "exit.py", "--name", "train", "--", "3", check=True)
    sandbox.cli("start", "never.py", "--name", "eval", "--after", "train", check=True)
    sandbox.cli("start", "exit.py", "--name", "report", "--after-any", "train", "--", "0",
                check=True)
    assert show(sandbox, "eval")["state"] == "queued"
    assert "waiting for train to end" in sandbox.cli("show", "eval", check=True).stdout
    (sandbox.root / "go").touch()
    rec = wait_state(sandbox, "eval", "failed", "succeeded")
    assert rec["state"] == "failed" and rec["exit_code"] is None
    assert rec["reason"] == {"kind": "dependency_failed", "detail": "failed", "pids": [],
                             "job": "train"}
    text = sandbox.cli("show", "eval", check=True).stdout
    assert "never started: job train, which it was to start after, failed" in text
    waited = sandbox.cli("wait", "eval")
    assert waited.returncode == 1
    assert waited.stdout.strip() == (
        "eval: failed (never started: job train, which it was to start after, failed)"
    )
    assert not (sandbox.root / "ran").exists()
    assert wait_state(sandbox, "report", "succeeded")["exit_code"] == 0
    err = sandbox.cli("start", "never.py", "--name", "late", "--after", "train").stderr
    assert "job train failed; --after starts a job only after a success" in err
    assert "no job of that name" in sandbox.cli("start", "never.py", "--after", "nope").stderr


def test_send_answers_a_prompt(sandbox: Sandbox) -> None:
    sandbox.write("ask.py", "name = input('name? ')\nprint('hello', name, flush=True)\n")
    sandbox.cli("start", "ask.py", "--name", "ask", check=True)
    wait_log(sandbox, "ask", "name?")
    assert "sent 13 characters" in sandbox.cli("send", "ask", "alice", "and bob", check=True).stdout
    wait_state(sandbox, "ask", "succeeded")
    assert "hello alice and bob" in log_of(sandbox, "ask")
    assert "has ended" in sandbox.cli("send", "ask", "again").stderr


def test_on_exit_runs_with_the_outcome_and_its_failure_is_only_noted(sandbox: Sandbox) -> None:
    sandbox.write("exit.py", "import sys\nsys.exit(int(sys.argv[1]))\n")
    record = sandbox.root / "outcome.txt"
    hook = (
        f"sh -c 'echo $HANDYJOBS_JOB $HANDYJOBS_STATE $HANDYJOBS_EXIT_CODE "
        f"$HANDYJOBS_DURATION_S >> {record}'"
    )
    sandbox.cli("start", "exit.py", "--name", "e4", "--on-exit", hook, "--", "4", check=True)
    wait_until(lambda: record.exists() and record.read_text(), what="the on-exit command")
    job, state, code, duration = record.read_text().split()
    assert (job, state, code) == ("e4", "failed", "4") and float(duration) >= 0
    sandbox.cli("start", "exit.py", "--name", "bad-hook", "--on-exit", "/nonexistent/x", "--", "0",
                check=True)
    assert wait_state(sandbox, "bad-hook", "succeeded")["exit_code"] == 0
    wait_log(sandbox, "bad-hook", "could not run")


def test_any_command_runs_with_exec_and_mistakes_say_how(sandbox: Sandbox) -> None:
    script = sandbox.write("run.sh", '#!/bin/sh\necho "step $1 in $HANDYJOBS_JOB"\nexit 5\n')
    script.chmod(0o755)
    sandbox.cli("start", "--exec", "./run.sh", "--name", "sh", "--", "one", check=True)
    rec = wait_state(sandbox, "sh", "failed")
    assert rec["exit_code"] == 5 and "step one in sh" in log_of(sandbox, "sh")
    sandbox.cli("start", "--exec", "echo", "--name", "echo", "--", "from PATH", check=True)
    wait_state(sandbox, "echo", "succeeded")
    assert "from PATH" in log_of(sandbox, "echo")
    err = sandbox.cli("start", "run.sh").stderr
    assert "is not a Python script" in err and "--exec run.sh" in err
    err = sandbox.cli("start", "--exec", "./run.sh", "--nproc", "2").stderr
    assert "--nproc 2 with --exec" in err and "torchrun --nproc-per-node" in err
    assert "not found on your PATH" in sandbox.cli("start", "--exec", "no-such-cmd-x").stderr


def test_groups_stop_and_wait_and_restart_all_failed(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", SLEEPER)
    sandbox.write("exit.py", "import sys\nsys.exit(int(sys.argv[1]))\n")
    for i in range(2):
        sandbox.cli("start", "sleep.py", "--name", f"g{i}", "--group", "grp", check=True)
    sandbox.cli("start", "sleep.py", "--name", "outsider", check=True)
    out = sandbox.cli("stop", "--group", "grp", check=True).stdout
    assert "stopped job g0" in out and "stopped job g1" in out
    assert show(sandbox, "outsider")["state"] == "running"
    sandbox.cli("stop", "--all", check=True)
    assert show(sandbox, "outsider")["state"] == "stopped"
    sandbox.cli("start", "exit.py", "--name", "f1", "--group", "fails", "--", "2", check=True)
    sandbox.cli("start", "exit.py", "--name", "ok1", "--group", "fails", "--", "0", check=True)
    waited = sandbox.cli("wait", "--group", "fails")
    assert waited.returncode == 2  # the first failure's code
    sandbox.cli("restart", "--all-failed", "--group", "fails", "--timeout", "1", check=True)
    assert len(show(sandbox, "f1")["runs"]) == 2 and len(show(sandbox, "ok1")["runs"]) == 1
    assert sandbox.cli("wait", "f1", "ok1").returncode == 2
    assert "give the jobs to stop" in sandbox.cli("stop").stderr


def test_restart_with_new_arguments_and_start_like(sandbox: Sandbox) -> None:
    sandbox.write("echo.py", "import sys\nprint('args', sys.argv[1:])\n")
    sandbox.cli("start", "echo.py", "--name", "a", "--group", "g", "--", "--lr", "1", check=True)
    wait_state(sandbox, "a", "succeeded")
    sandbox.cli("restart", "a", "--", "--lr", "2", check=True)
    wait_log(sandbox, "a", "['--lr', '2']")
    out = sandbox.cli("start", "--like", "a", "--name", "b", "--", "--lr", "3", check=True).stdout
    assert "started b" in out
    wait_state(sandbox, "b", "succeeded")
    b = show(sandbox, "b")
    assert b["spec"]["args"] == ["--lr", "3"] and b["spec"]["group"] == "g"
    sandbox.cli("start", "--like", "b", "--name", "c", check=True)
    wait_state(sandbox, "c", "succeeded")
    assert "['--lr', '3']" in log_of(sandbox, "c")


def test_priority_jumps_a_full_queue(sandbox: Sandbox) -> None:
    sandbox.write("job.py", STAMPED)
    stamps = sandbox.root / "stamps.jsonl"
    env = {"STAMPS": str(stamps), "HOLD": "0.5"}
    sandbox.write("hold.py", SLEEPER)
    sandbox.cli("config", "parallel", "1", check=True)
    flag = sandbox.root / "go"
    sandbox.cli("start", "hold.py", "--name", "first", "--", str(flag), check=True)
    for name, prio in (("second", "0"), ("urgent", "9")):
        sandbox.cli("start", "job.py", "--name", name, "--priority", prio, env=env, check=True)
    assert show(sandbox, "urgent")["wait"]["position"] == 1
    # `list` says each queued job's place and why it waits, first in the queue first.
    listed = sandbox.cli("list", check=True).stdout.splitlines()
    states = {line.split()[0]: line.split()[1:3] for line in listed[1:4]}
    assert states["first"][0] == "running"
    assert states["urgent"] == ["queued", "#1"] and states["second"] == ["queued", "#2"]
    assert listed[4:] == [
        "#1 urgent: 1 of 1 jobs allowed at once are running",
        "#2 second: 1 of 1 jobs allowed at once are running",
    ]
    flag.touch()
    assert sandbox.cli("wait", "first", "second", "urgent", timeout=60).returncode == 0
    order = [r["job"] for r in sorted(_stamps(stamps), key=lambda r: r["start"])]
    assert order == ["urgent", "second"]


def test_config_file_and_environment(sandbox: Sandbox) -> None:
    assert sandbox.cli("config", "parallel", "3", check=True).stdout == "parallel = 3\n"
    sandbox.cli("config", "parallel", "1", "--group", "sweep", check=True)
    doc = json.loads(sandbox.cli("config", "--json", check=True).stdout)
    assert doc["parallel"] == 3 and doc["groups"] == {"sweep": {"parallel": 1}}
    assert (sandbox.home / "config.toml").stat().st_mode & 0o777 == 0o600
    assert sandbox.cli("config", "parallel", "lots").returncode == 2
    assert sandbox.cli("config", "colour", "red").returncode == 2
    sandbox.cli("config", "--unset", "parallel", check=True)
    assert sandbox.cli("config", "parallel", check=True).stdout == "\n"


def test_version_and_bare_command(sandbox: Sandbox) -> None:
    from handyjobs import __version__

    assert sandbox.cli("--version", check=True).stdout == f"handyjobs {__version__}\n"


@pytest.mark.parametrize("shell", ["bash"])
def test_completion_script_completes_commands_options_and_job_names(
    sandbox: Sandbox, shell: str
) -> None:
    sandbox.write("ok.py", "print('ok')\n")
    sandbox.cli("start", "ok.py", "--name", "alpha-job", check=True)
    sandbox.cli("start", "ok.py", "--name", "beta-job", check=True)
    script = sandbox.cli("completion", shell, check=True).stdout
    (sandbox.root / "comp.sh").write_text(script)
    probe = (
        "source comp.sh\n"
        "ask() { COMP_WORDS=(\"$@\"); COMP_CWORD=$(( $# - 1 )); "
        "_handyjobs_completion handyjobs; echo \"${COMPREPLY[*]}\"; }\n"
        "ask handyjobs logs al\n"
        "ask handyjobs sto\n"
        "ask handyjobs start --ngp\n"
    )
    bindir = Path(sys.executable).parent
    env = {**sandbox.env, "PATH": f"{bindir}{os.pathsep}{sandbox.env['PATH']}"}
    out = subprocess.run(
        ["bash", "-c", probe], cwd=sandbox.root, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["alpha-job", "stop", "--ngpus"]
    assert sandbox.cli("completion", "tcsh").returncode == 2


def test_max_restarts_lets_torchrun_restart_and_show_counts_it(sandbox: Sandbox) -> None:
    sandbox.write(
        "flaky.py",
        "import os, sys, time\n"
        "attempt = int(os.environ['TORCHELASTIC_RESTART_COUNT'])\n"
        "print('attempt', attempt, flush=True)\n"
        "if attempt == 0:\n    sys.exit(1)\n"
        "time.sleep(3)\n",
    )
    sandbox.cli("start", "flaky.py", "--cpu", "--max-restarts", "1", "--name", "flaky", check=True)
    rec = wait_state(sandbox, "flaky", "succeeded", "failed", timeout=120)
    assert rec["state"] == "succeeded", log_of(sandbox, "flaky")
    assert "attempt 0" in log_of(sandbox, "flaky") and "attempt 1" in log_of(sandbox, "flaky")
    assert rec["runs"][-1]["cost"]["restarts"] == 1
    assert "1 of at most 1" in sandbox.cli("show", "flaky", check=True).stdout
