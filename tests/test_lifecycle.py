"""End to end: the real CLI, real tmux on a throwaway socket, real processes and torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SLEEPER, Sandbox, log_of, show, wait_log, wait_state, wait_until

from handyjobs.backends.tmux.handle import TmuxHandle
from handyjobs.core.procs import is_running as pid_alive
from handyjobs.core.records import JobState


def test_one_process_runs_plain_python_with_the_callers_env_and_a_tty(sandbox: Sandbox) -> None:
    sandbox.write(
        "job.py",
        """
import os, sys
print("argv", sys.argv[1:])
print("tty", sys.stdout.isatty())
print("env", os.environ.get("MY_SECRET"), os.environ.get("STALE"), os.environ.get("EXTRA"))
print("hj", os.environ["HANDYJOBS_JOB"], os.environ.get("HANDYJOBS_DEVICE"),
      "TORCHELASTIC_RUN_ID" in os.environ)
print("exe", sys.executable)
""",
    )
    # A tmux server that already runs, with a stale value, must not leak it into the job.
    subprocess.run(
        [
            "tmux",
            "-L",
            sandbox.env["HANDYJOBS_TMUX_SOCKET"],
            "new-session",
            "-d",
            "-s",
            "other",
            "-e",
            "STALE=from-tmux-server",
            "sleep",
            "60",
        ],
        env={**sandbox.env, "STALE": "from-tmux-server"},
        check=True,
    )
    out = sandbox.cli(
        "start",
        "job.py",
        "--name",
        "j1",
        "--env",
        "EXTRA=x y",
        "--",
        "a b",
        "$(touch pwned)",
        ";",
        "*",
        "--synch",
        "'q'",
        env={"MY_SECRET": "s3cr3t value", "STALE": "fresh"},
        check=True,
    ).stdout
    assert "j1" in out and "output.log" in out
    wait_state(sandbox, "j1", "succeeded")
    log = log_of(sandbox, "j1")
    assert "argv ['a b', '$(touch pwned)', ';', '*', '--synch', \"'q'\"]" in log
    assert not (sandbox.root / "pwned").exists()  # no shell ever saw the arguments
    assert "tty True" in log
    assert "env s3cr3t value fresh x y" in log
    assert "hj j1 None False" in log  # no --cpu, and no torchrun for one process


def test_secrets_never_appear_on_a_command_line(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", SLEEPER)
    sandbox.cli("start", "sleep.py", "--name", "s", env={"MY_TOKEN": "tok-4242-secret"}, check=True)
    wait_log(sandbox, "s", "pid")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "tok-4242-secret" not in ps
    # the environment is kept for restarts, private to the user; nothing is left pending
    assert oct((sandbox.home / "jobs" / "s" / "env.json").stat().st_mode & 0o777) == "0o600"
    assert list((sandbox.home / "pending").iterdir()) == []
    sandbox.cli("stop", "s", check=True)


def test_python_comes_from_the_callers_path_or_option(sandbox: Sandbox) -> None:
    bindir = sandbox.root / "bin"
    bindir.mkdir()
    wrapper = bindir / "python"
    wrapper.write_text(f'#!/bin/sh\nexport VIA_WRAPPER=yes\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    sandbox.write("which.py", "import os; print('wrapper', os.environ.get('VIA_WRAPPER'))\n")
    path = f"{bindir}:{sandbox.env['PATH']}"
    sandbox.cli("start", "which.py", "--name", "p1", env={"PATH": path}, check=True)
    sandbox.cli("start", "which.py", "--name", "p2", "--python", sys.executable, check=True)
    wait_state(sandbox, "p1", "succeeded")
    wait_state(sandbox, "p2", "succeeded")
    assert "wrapper yes" in log_of(sandbox, "p1")
    assert "wrapper None" in log_of(sandbox, "p2")
    assert show(sandbox, "p1")["spec"]["python"] == str(wrapper)


def test_options_after_script_module_cwd(sandbox: Sandbox) -> None:
    pkg = sandbox.root / "proj" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text("import os, sys; print('mod', sys.argv[1:], os.getcwd())\n")
    sandbox.cli(
        "start",
        "-m",
        "pkg.train",
        "--cwd",
        str(sandbox.root / "proj"),
        "--synch",
        "--name",
        "m1",
        "--lr",
        "3e-4",
        check=True,
    )
    wait_state(sandbox, "m1", "succeeded")
    log = log_of(sandbox, "m1")
    assert f"mod ['--synch', '--lr', '3e-4'] {sandbox.root / 'proj'}" in log


@pytest.mark.parametrize(
    ("example", "args", "script_args"),
    [
        ("train.py", ["--", "--epochs", "1"], ["--epochs", "1"]),
        # the seed's own flag, after SCRIPT with no `--`, goes to the script
        ("seed_style.py", ["--synch"], ["--synch"]),
    ],
)
def test_two_process_cpu_example_succeeds_with_torchrun(
    sandbox: Sandbox, example: str, args: list[str], script_args: list[str]
) -> None:
    script = str(REPO / "examples" / example)
    sandbox.cli("start", script, "--cpu", "--nproc", "2", "--name", "ddp", *args, check=True)
    rec = wait_state(sandbox, "ddp", "succeeded", "failed", timeout=120)
    log = log_of(sandbox, "ddp")
    assert rec["state"] == "succeeded", log
    assert "torch.distributed.run" in log and "--nproc-per-node=2" in log
    assert rec["nproc"] == 2 and rec["exit_code"] == 0
    assert rec["spec"]["args"] == script_args
    assert rec["runs"][0]["rendezvous"].startswith("standalone")
    if example == "seed_style.py":
        # The seed README's script, unchanged, under handyjobs' torchrun: DDP on CPU, rank 0
        # alone prints and writes its log and model.
        assert "done: 3 epochs" in log and "(DDP, cpu)" in log
        assert log.count("epoch 1/3") == 1
        out = sandbox.root / "runs" / "seed_style"
        assert len((out / "log.txt").read_text().splitlines()) == 3
        import torch  # only this case reads a checkpoint

        assert torch.load(out / "model.pt", weights_only=True)["epoch"] == 3


def test_two_torchrun_jobs_at_once_do_not_collide_on_a_port(sandbox: Sandbox) -> None:
    sandbox.write(
        "dist.py",
        """
import os
import torch.distributed as dist
dist.init_process_group("gloo")
dist.barrier()
os.write(1, f"ok rank {dist.get_rank()}\\n".encode())  # one write: ranks interleave
dist.destroy_process_group()
""",
    )
    for name in ("d1", "d2"):
        sandbox.cli("start", "dist.py", "--cpu", "--nproc", "2", "--name", name, check=True)
    for name in ("d1", "d2"):
        rec = wait_state(sandbox, name, "succeeded", "failed", timeout=120)
        assert rec["state"] == "succeeded", log_of(sandbox, name)
        assert "ok rank 0" in log_of(sandbox, name) and "Address already in use" not in log_of(
            sandbox, name
        )


def test_failing_script_ends_failed_with_its_code_and_traceback(sandbox: Sandbox) -> None:
    sandbox.write(
        "boom.py",
        "import sys\nprint('before')\nraise SystemExit(sys.exit(int('7')) if False else 7)\n",
    )
    sandbox.write("raise.py", "def f():\n    raise ValueError('bad lr')\nf()\n")
    sandbox.cli("start", "boom.py", "--name", "b7", check=True)
    sandbox.cli("start", "raise.py", "--name", "tb", check=True)
    assert wait_state(sandbox, "b7", "failed")["exit_code"] == 7
    rec = wait_state(sandbox, "tb", "failed")
    assert rec["exit_code"] == 1
    log = log_of(sandbox, "tb")
    assert "Traceback (most recent call last)" in log and "ValueError: bad lr" in log
    wait = sandbox.cli("wait", "b7")
    assert wait.returncode == 7  # wait exits with the job's own code


def test_stop_leaves_no_process_of_a_two_rank_job(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", SLEEPER)
    sandbox.cli("start", "sleep.py", "--cpu", "--nproc", "2", "--name", "s2", check=True)
    wait_log(sandbox, "s2", lambda log: log.count("pid ") == 2, 60, what="both ranks")
    workers = [  # rank 0's line as printed, rank 1's tagged "[rank 1] pid ..."
        int(line.split("pid ")[1].split()[0])
        for line in log_of(sandbox, "s2").splitlines()
        if "pid " in line
    ]
    assert len(workers) == 2
    rec = show(sandbox, "s2")
    pids = [*workers, rec["runs"][-1]["pids"]["main"], rec["runs"][-1]["pids"]["runner"]]
    assert all(pid_alive(p) for p in pids)
    out = sandbox.cli("stop", "s2", check=True)
    assert "stopped" in out.stdout
    assert not [p for p in pids if pid_alive(p)]  # gone when stop returns, workers included
    rec = show(sandbox, "s2")
    assert rec["state"] == "stopped"
    assert sandbox.tmux("has-session", "-t", "=s2").returncode != 0
    again = sandbox.cli("stop", "s2")
    assert again.returncode == 1 and "not running" in again.stderr
    assert again.stderr.count("\n") == 1 and "Traceback" not in again.stderr


def test_stop_kills_a_job_that_ignores_sigterm_after_the_grace_period(sandbox: Sandbox) -> None:
    sandbox.write(
        "stubborn.py",
        """
import signal, time, os
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("pid", os.getpid(), flush=True)
time.sleep(600)
""",
    )
    sandbox.cli("start", "stubborn.py", "--name", "st", check=True)
    wait_log(sandbox, "st", "pid")
    pid = int(log_of(sandbox, "st").split("pid ")[1].split()[0])
    sandbox.cli("stop", "st", "--timeout", "1", check=True)
    assert not pid_alive(pid)
    rec = show(sandbox, "st")
    assert rec["state"] == "stopped" and rec["signal"] == 9


def test_logs_tail_and_follow_to_the_end(sandbox: Sandbox) -> None:
    sandbox.write(
        "count.py",
        """
import sys, time, os
for i in range(5):
    print("line", i, flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
print("\\rprogress 50%\\rprogress 100%", flush=True)
print("last", flush=True)
""",
    )
    flag = sandbox.root / "go"
    sandbox.cli("start", "count.py", "--name", "c", "--", str(flag), check=True)
    wait_log(sandbox, "c", "line 4")
    assert sandbox.cli("logs", "c", "-n", "2", check=True).stdout.splitlines() == [
        "line 3",
        "line 4",
    ]
    follower = subprocess.Popen(
        [sys.executable, "-m", "handyjobs", "logs", "c", "-f"],
        env=sandbox.env,
        stdout=subprocess.PIPE,
    )
    flag.touch()
    out, _ = follower.communicate(timeout=30)  # returns by itself when the job ends
    assert follower.returncode == 0
    # piped, the redraws show as a terminal would have left them; --raw has the bytes
    assert b"line 0" in out and b"\nprogress 100%\n" in out and b"last" in out
    assert b"\r" not in out
    log = Path(show(sandbox, "c")["log_path"])
    assert b"\rprogress 50%\rprogress 100%" in log.read_bytes()
    assert sandbox.cli("logs", "c", "--raw", check=True).stdout == log.read_text()
    assert b"ended" in out.splitlines()[-1]
    # still readable once the job has ended
    assert "last" in sandbox.cli("logs", "c", "-n", "3", check=True).stdout


def test_logs_follow_and_wait_exit_with_the_jobs_code_and_wait_times_out_with_124(
    sandbox: Sandbox,
) -> None:
    sandbox.write(
        "seven.py",
        "import os, sys, time\nprint('up', flush=True)\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.05)\nraise SystemExit(7)\n",
    )
    flag = sandbox.root / "go"
    sandbox.cli("start", "seven.py", "--name", "s7", "--", str(flag), check=True)
    timed_out = sandbox.cli("wait", "s7", "--timeout", "0.5")
    assert timed_out.returncode == 124 and "still running after 0.5s" in timed_out.stderr
    follower = subprocess.Popen(
        [sys.executable, "-m", "handyjobs", "logs", "s7", "-f"],
        env=sandbox.env,
        stdout=subprocess.PIPE,
    )
    flag.touch()
    follower.communicate(timeout=30)
    assert follower.returncode == 7
    assert sandbox.cli("wait", "s7").returncode == 7


def test_restart_runs_with_the_first_starts_environment(sandbox: Sandbox) -> None:
    sandbox.write("env.py", "import os\nprint('FOO is', os.environ.get('FOO'))\n")
    sandbox.cli("start", "env.py", "--name", "e", env={"FOO": "first"}, check=True)
    wait_state(sandbox, "e", "succeeded")
    sandbox.cli("restart", "e", env={"FOO": "from the restarting shell"}, check=True)
    wait_log(sandbox, "e", lambda log: log.count("FOO is") == 2, what="run 2")
    assert log_of(sandbox, "e").count("FOO is first") == 2
    sandbox.cli("restart", "e", "--env", "FOO=changed", check=True)
    wait_log(sandbox, "e", "FOO is changed")
    assert show(sandbox, "e")["spec"]["env"] == {"FOO": "..."}  # masked unless asked
    shown = sandbox.cli("show", "e", "--json", "--show-secrets", check=True).stdout
    assert json.loads(shown)["spec"]["env"] == {"FOO": "changed"}


def test_restart_appends_a_new_run_to_the_history_and_the_log(sandbox: Sandbox) -> None:
    sandbox.write("once.py", "import os; print('run', os.environ['HANDYJOBS_RUN'])\n")
    sandbox.cli("start", "once.py", "--name", "r", check=True)
    wait_state(sandbox, "r", "succeeded")
    sandbox.cli("restart", "r", check=True)
    wait_until(
        lambda: (
            show(sandbox, "r")["runs"][-1]["state"] == "succeeded"
            and len(show(sandbox, "r")["runs"]) == 2
        ),
        what="second run",
    )
    log = log_of(sandbox, "r")
    assert "run 1\n" in log and "run 2\n" in log
    assert log.count("[handyjobs] run 1 of r started") == 1
    assert log.count("[handyjobs] run 2 of r started") == 1
    rec = show(sandbox, "r")
    assert [run["run"] for run in rec["runs"]] == [1, 2]
    assert rec["runs"][0]["run_id"] != rec["runs"][1]["run_id"]


def test_list_show_json_and_filters(sandbox: Sandbox) -> None:
    sandbox.write("ok.py", "print('ok')\n")
    sandbox.write("bad.py", "raise SystemExit(2)\n")
    sandbox.write("sleep.py", SLEEPER)
    sandbox.cli("start", "ok.py", "--name", "ok", check=True)
    sandbox.cli("start", "bad.py", "--name", "bad", check=True)
    wait_state(sandbox, "ok", "succeeded")
    wait_state(sandbox, "bad", "failed")
    sandbox.cli("start", "sleep.py", "--name", "live", check=True)
    table = sandbox.cli("list", check=True).stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "STATE",
        "GPUS",
        "NPROC",
        "STARTED",
        "DURATION",
        "EXIT",
        "COMMAND",
    ]
    assert [row.split()[0] for row in table[1:]] == ["live", "bad", "ok"]  # newest first
    assert table[1].split()[1] == "running"
    data = json.loads(sandbox.cli("list", "--json", check=True).stdout)
    assert {d["name"]: d["state"] for d in data} == {
        "live": "running",
        "bad": "failed",
        "ok": "succeeded",
    }
    failed = json.loads(sandbox.cli("list", "--state", "failed", "--json", check=True).stdout)
    assert [d["name"] for d in failed] == ["bad"]
    rec = show(sandbox, "bad")
    for key in (
        "name",
        "state",
        "command",
        "spec",
        "session",
        "runs",
        "created_at",
        "started_at",
        "ended_at",
        "exit_code",
        "signal",
        "log_path",
        "git",
        "gpus",
        "nproc",
    ):
        assert key in rec
    assert rec["spec"]["cwd"] == str(sandbox.root) and rec["spec"]["python"]
    assert "exit" in sandbox.cli("show", "bad", check=True).stdout
    sandbox.cli("stop", "live", check=True)


def test_list_shows_active_and_twenty_recent_unless_all(sandbox: Sandbox) -> None:
    from conftest import make_record

    from handyjobs.core import registry

    with registry.locked(sandbox.home) as reg:
        for i in range(30):
            reg.put(make_record(f"old-{i:02d}", created=f"2026-01-01T00:00:{i:02d}.000Z"))
    out = sandbox.cli("list", check=True)
    names = [row.split()[0] for row in out.stdout.splitlines()[1:]]
    assert names == [f"old-{i:02d}" for i in range(29, 9, -1)]
    assert "20 of 30" in out.stderr and "--all" in out.stderr
    assert len(sandbox.cli("list", "--all", check=True).stdout.splitlines()) == 31


def test_rm_and_clean(sandbox: Sandbox) -> None:
    sandbox.write("ok.py", "print('ok')\n")
    sandbox.write("sleep.py", SLEEPER)
    for name in ("a", "b", "c"):
        sandbox.cli("start", "ok.py", "--name", name, check=True)
    sandbox.cli("start", "sleep.py", "--name", "live", check=True)
    for name in ("a", "b", "c"):
        wait_state(sandbox, name, "succeeded")
    refused = sandbox.cli("rm", "live")
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert show(sandbox, "live")["state"] == "running"
    sandbox.cli("rm", "a", check=True)
    # Logs are kept by default, set aside with the removed job (a new job "a" starts afresh).
    assert not (sandbox.home / "jobs" / "a").exists()
    assert list((sandbox.home / "removed" / "a").glob("*/output.log"))
    assert "ok" in sandbox.cli("logs", "a", "--removed", check=True).stdout
    sandbox.cli("rm", "b", "--logs", check=True)
    assert not (sandbox.home / "jobs" / "b").exists()
    assert sandbox.cli("show", "a").returncode == 1
    assert "removed 1 finished job" in sandbox.cli("clean", check=True).stdout  # c only
    assert [d["name"] for d in json.loads(sandbox.cli("list", "--json").stdout)] == ["live"]
    sandbox.cli("rm", "live", "--force", check=True)
    assert sandbox.tmux("has-session", "-t", "=live").returncode != 0


def test_attach_puts_a_terminal_into_the_session_and_refuses_finished_jobs(
    sandbox: Sandbox,
) -> None:
    import pty
    import select

    sandbox.write("banner.py", SLEEPER.replace('print("pid"', 'print("BANNER-XYZ", "pid"'))
    sandbox.cli("start", "banner.py", "--name", "att", check=True)
    wait_log(sandbox, "att", "BANNER-XYZ")
    pid, fd = pty.fork()
    if pid == 0:  # the child is a user's terminal running `handyjobs attach`
        os.execve(
            sys.executable,
            [sys.executable, "-m", "handyjobs", "attach", "att"],
            {**sandbox.env, "TERM": "xterm"},
        )
    seen = b""

    def screen_has_banner() -> bool:
        nonlocal seen
        if select.select([fd], [], [], 0.1)[0]:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                return False
        return b"BANNER-XYZ" in seen

    wait_until(screen_has_banner, 20, what="the job's screen through attach")
    sandbox.tmux("detach-client", "-s", "att")  # as Ctrl-b d would; the job keeps running
    waited = wait_until(
        lambda: [r for r in [os.waitpid(pid, os.WNOHANG)] if r[0] == pid],
        20,
        what="attach to return after detach",
    )
    os.close(fd)
    assert os.waitstatus_to_exitcode(waited[0][1]) == 0  # type: ignore[index]
    assert show(sandbox, "att")["state"] == "running"
    sandbox.cli("stop", "att", check=True)
    finished = sandbox.cli("attach", "att")
    assert finished.returncode == 1 and "handyjobs logs att" in finished.stderr


def test_killing_the_tmux_server_makes_running_jobs_lost(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", SLEEPER)
    sandbox.cli("start", "sleep.py", "--name", "l1", check=True)
    wait_log(sandbox, "l1", "pid")
    sandbox.tmux("kill-server")
    rec = wait_state(sandbox, "l1", "lost", "failed", timeout=20)
    assert rec["state"] == "lost" and rec["ended_at"]


def test_a_job_printing_100_mb_fast_is_logged_whole(sandbox: Sandbox) -> None:
    sandbox.write(
        "flood.py",
        """
import sys
chunk = (b"0123456789abcdef" * 4095 + b"0123456789abcde\\n")
for _ in range(1600):  # 1600 x 64 KiB = 100 MiB
    sys.stdout.buffer.write(chunk)
sys.stdout.flush()
""",
    )
    sandbox.cli("start", "flood.py", "--name", "flood", check=True)
    wait_state(sandbox, "flood", "succeeded", "failed", timeout=120)
    log = Path(show(sandbox, "flood")["log_path"]).read_bytes()
    chunk = b"0123456789abcdef" * 4095 + b"0123456789abcde\n"
    assert log.count(chunk) == 1600


def test_cli_import_does_not_import_torch() -> None:
    code = (
        "import sys, handyjobs, handyjobs.cli, handyjobs.core.jobs; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["start", "missing.py"], "not found"),
        (["start", "ok.py", "--gpus", "2,x"], "--gpus"),
        (["start", "ok.py", "--gpus", "-1"], "--gpus"),
        (["start", "ok.py", "--gpus", "2,2"], "--gpus"),
        (["start", "ok.py", "--name", "bad name!"], "invalid job name"),
        (["start", "ok.py", "--name", "x" * 65], "invalid job name"),
        (["start", "ok.py", "--name", "a.b"], "invalid job name"),
        (["start", "ok.py", "--name", "taken"], "exists"),
        (["start", "ok.py", "--nproc", "0"], "--nproc"),
        (["start", "ok.py", "--cpu", "--gpus", "0"], "--cpu"),
        (["start", "ok.py", "--after-any"], "--after-any"),
        (["start", "--exec", "ok.py", "--nproc", "2"], "--nproc 2 with --exec"),
        (["start", "ok.py", "--group", "-g"], "invalid job name"),
        (["start", "ok.py", "--ngpus", "1", "--force"], "--force"),
        (["start", "ok.py", "--env", "NOEQUALS"], "KEY=VALUE"),
        (["start", "ok.py", "--cwd", "/nonexistent/dir"], "no such directory"),
        (["start", "ok.py", "--python", "/nonexistent/python"], "--python"),
        (["start", "ok.py", "--nproc", "two"], "--nproc"),
        (["list", "--state", "weird"], "not a state"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    sandbox: Sandbox, args: list[str], needle: str
) -> None:
    sandbox.write("ok.py", "print('ok')\n")
    sandbox.cli("start", "ok.py", "--name", "taken", check=True)
    wait_state(sandbox, "taken", "succeeded")

    def taken_open() -> bool:
        return "taken" in sandbox.tmux("list-sessions", "-F", "#{session_name}").stdout

    # Its session closes a few ms after the outcome is recorded: wait for that, so the check
    # below sees what the failed command did, not the session's own end.
    wait_until(lambda: not taken_open(), 10, 0.02, "taken's session to close")
    before = (sandbox.home / "registry.json").read_bytes()
    sessions = sandbox.tmux("list-sessions", "-F", "#{session_name}").stdout
    proc = sandbox.cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert (sandbox.home / "registry.json").read_bytes() == before
    assert sandbox.tmux("list-sessions", "-F", "#{session_name}").stdout == sessions


def test_unknown_job_is_exit_1_and_missing_tmux_is_exit_2(sandbox: Sandbox) -> None:
    for cmd in ("show", "logs", "stop", "wait", "attach", "restart", "rm"):
        proc = sandbox.cli(cmd, "nope")
        assert proc.returncode == 1 and "no job named nope" in proc.stderr, (cmd, proc.stderr)
    sandbox.write("ok.py", "print('ok')\n")
    nobin = sandbox.root / "empty-bin"
    nobin.mkdir()
    (nobin / "git").symlink_to("/bin/false")
    proc = sandbox.cli("start", "ok.py", env={"PATH": str(nobin)})
    assert proc.returncode == 2 and "tmux is not installed" in proc.stderr
    assert not (sandbox.home / "registry.json").exists()


def test_twenty_starts_at_once_give_twenty_jobs(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", SLEEPER)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "handyjobs", "start", "sleep.py"],
            env=sandbox.env,
            cwd=sandbox.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(20)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 20, results
    doc = json.loads((sandbox.home / "registry.json").read_text())  # valid JSON
    names = {j["name"] for j in doc["jobs"]}
    assert len(names) == 20 and all(n.startswith("sleep-") for n in names)
    sessions = set(sandbox.tmux("list-sessions", "-F", "#{session_name}").stdout.split())
    assert names <= sessions
    flag = sandbox.root / "flag"
    del flag
    sandbox.cli("stop", *sorted(names), check=True)
    assert all(j["state"] == "stopped" for j in json.loads(sandbox.cli("list", "--json").stdout))


def test_start_killed_mid_write_leaves_a_valid_registry_and_no_orphan_session(
    sandbox: Sandbox,
) -> None:
    from conftest import make_record

    from handyjobs.core import registry

    with registry.locked(sandbox.home) as reg:
        for i in range(3000):  # a history big enough that reading it would take a while
            reg.put(make_record(f"old-{i}"))
        for i in range(50):
            reg.put(make_record(f"live-{i}", JobState.RUNNING))  # registry.json rewrites
    sandbox.write("sleep.py", SLEEPER)
    import random
    import signal
    import time

    rng = random.Random(7)
    for i in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-m", "handyjobs", "start", "sleep.py", "--name", f"k{i}"],
            env=sandbox.env,
            cwd=sandbox.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.05, 0.4))  # somewhere between start-up and the final rename
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(registry.load_active(sandbox.home)) >= 50  # always whole files
        assert len(registry.load_all(sandbox.home)) >= 3050

    def sessions_match_records() -> bool:
        names = {TmuxHandle.of(r.current).session for r in registry.load_active(sandbox.home)}
        live = set(sandbox.tmux("list-sessions", "-F", "#{session_name}").stdout.split())
        return live <= names  # a session whose start died before saving ends by itself

    wait_until(sessions_match_records, 30, what="orphan sessions to end")
    # The next start sweeps environment files that no record owns (the caller's secrets).
    sandbox.cli("start", "sleep.py", "--name", "sweeper", check=True)
    assert list((sandbox.home / "pending").iterdir()) == []
    recorded = {r.name for r in registry.load_all(sandbox.home)}
    for env_file in (sandbox.home / "jobs").glob("*/env.json"):
        assert env_file.parent.name in recorded
    for record in registry.load_active(sandbox.home):
        if record.name.startswith(("k", "sweeper")) and record.state.value == "running":
            sandbox.cli("stop", record.name, check=True)


def test_start_follow_streams_the_log_and_exits_with_the_jobs_code(sandbox: Sandbox) -> None:
    sandbox.write(
        "three.py",
        "import time\nprint('working', flush=True)\ntime.sleep(0.5)\n"
        "print('giving up')\nraise SystemExit(3)\n",
    )
    proc = sandbox.cli("start", "three.py", "--name", "f3", "--follow")
    assert proc.returncode == 3
    assert "working" in proc.stdout and "giving up" in proc.stdout
    assert proc.stdout.index("started f3") < proc.stdout.index("working")
