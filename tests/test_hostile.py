"""Hostile and odd input of issue 21 (items 6 and 7) with real runners and real tmux; each
test fails on the code before its fix."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import SLEEPER, Sandbox, log_of, show, wait_log, wait_state, wait_until


def test_a_malformed_config_says_so_on_the_queued_job_and_the_queue_goes_on_once_fixed(
    sandbox: Sandbox,
) -> None:
    """A config.toml broken while a job waits for a slot: the queued job's reason names the
    file and what is wrong (not a stale "1 of 1 running"), and it starts once the file is fixed."""
    sandbox.write("sleeper.py", SLEEPER)
    go = sandbox.root / "go"
    sandbox.cli("config", "parallel", "1", check=True)
    sandbox.cli("start", "--cpu", "--name", "first", "sleeper.py", str(go), check=True)
    sandbox.cli("start", "--cpu", "--name", "second", "--wait", "sleeper.py", str(go), check=True)
    wait_state(sandbox, "first", "running")
    config = sandbox.home / "config.toml"
    # Replaced whole, as an editor saves it: written in place, the file is empty for a moment,
    # and a pass that reads it then finds no limit and starts the job (seen under load).
    broken = config.with_name("config.toml.new")
    broken.write_text("parallel = [\n")
    os.replace(broken, config)
    go.touch()
    wait_state(sandbox, "first", "succeeded")

    def says_config() -> bool:
        wait = show(sandbox, "second")["runs"][-1].get("wait") or {}
        return wait.get("config") == str(config)

    wait_until(says_config, timeout=30, what="the queued job to name the config file")
    shown = sandbox.cli("show", "second", check=True).stdout
    assert f"{config} is not valid" in shown and "allowed at once" not in shown
    assert show(sandbox, "second")["state"] == "queued"
    config.write_text("parallel = 1\n")
    wait_state(sandbox, "second", "succeeded", timeout=60)


def test_send_passes_a_dash_literally_and_refuses_ctrl_c_without_raw(sandbox: Sandbox) -> None:
    """`send NAME -- -x` types "-x" (it was read as send-keys' option); `send NAME $'\\x03'`
    is refused (it interrupted the job) and the job goes on to read the next line."""
    sandbox.write(
        "ask.py",
        "a = input('first? ')\nprint('got', repr(a), flush=True)\n"
        "b = input('second? ')\nprint('got', repr(b), flush=True)\n",
    )
    sandbox.cli("start", "--cpu", "ask.py", "--name", "ask", check=True)
    wait_log(sandbox, "ask", "first?")
    refused = sandbox.cli("send", "ask", "\x03")
    assert refused.returncode == 2 and "--raw" in refused.stderr
    assert refused.stderr.count("\n") == 1
    sandbox.cli("send", "ask", "--", "-x", check=True)
    wait_log(sandbox, "ask", "got '-x'")
    sandbox.cli("send", "ask", "--", "-t", "two words", check=True)
    wait_state(sandbox, "ask", "succeeded")
    assert "got '-t two words'" in log_of(sandbox, "ask")


def test_a_job_folder_replaced_by_a_link_is_refused_never_followed(sandbox: Sandbox) -> None:
    """restart of a job whose folder is now a link to another folder: one line, exit 2, and
    the folder it points to keeps its mode and its files (it was chmodded and written into)."""
    sandbox.write("quick.py", "print('ran', flush=True)\n")
    sandbox.cli("start", "--cpu", "--name", "q", "quick.py", check=True)
    wait_state(sandbox, "q", "succeeded")
    victim = sandbox.root / "victim"
    victim.mkdir(mode=0o755)
    victim.chmod(0o755)
    (victim / "keep.txt").write_text("mine\n")
    folder = sandbox.home / "jobs" / "q"
    folder.rename(folder.with_name("q-moved"))
    folder.symlink_to(victim)
    done = sandbox.cli("restart", "q")
    assert done.returncode == 2, done.stderr
    assert "is a link" in done.stderr and done.stderr.count("\n") == 1
    assert victim.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert show(sandbox, "q")["state"] == "succeeded"


def test_concurrent_sweeps_of_one_script_get_groups_of_their_own(sandbox: Sandbox) -> None:
    """Four sweeps of one script at once (two with a --prefix of their own): every one queues
    its jobs, each in a group no other sweep has (they failed on each other's names, or
    shared a group)."""
    sandbox.write("train.py", "print('hi')\n")
    extra = [[], [], ["--prefix", "a"], ["--prefix", "b"]]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "handyjobs",
                "sweep",
                "--hold",
                "--grid",
                "lr=1,2",
                *more,
                "train.py",
            ],
            env={**sandbox.env, "PWD": str(sandbox.root)},
            cwd=sandbox.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for more in extra
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    jobs = json.loads(sandbox.cli("list", "--json", "--all", check=True).stdout)
    groups: dict[str, set[str]] = {}
    for job in jobs:
        groups.setdefault(job["spec"]["group"], set()).add(job["name"])
    assert len(jobs) == 8 and len(groups) == 4, groups
    assert all(len(names) == 2 for names in groups.values()), groups


def test_a_command_blocked_on_the_state_lock_says_who_holds_it(sandbox: Sandbox) -> None:
    """A writer that waits for the state lock says so once on stderr after about 2 s, naming
    the pid that holds it (it waited without a word), and goes on once it is free."""
    sandbox.home.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(sandbox.home, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    proc = subprocess.Popen(
        [sys.executable, "-m", "handyjobs", "config", "parallel", "3"],
        env=sandbox.env,
        cwd=sandbox.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("waiting for the state lock" in x for x in lines), timeout=20)
        assert f"pid {os.getpid()}" in lines[0] and len(lines) == 1
        assert proc.poll() is None  # still waiting: the lock is still ours
    finally:
        os.close(fd)
    assert proc.wait(timeout=30) == 0
    reader.join(timeout=5)
    assert len(lines) == 1, lines
    assert "parallel = 3" in (sandbox.home / "config.toml").read_text()


TERM_IGNORED = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: print("got TERM", flush=True))
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
print("done by itself", flush=True)
"""


def test_an_interrupted_stop_leaves_no_stop_request_behind(sandbox: Sandbox) -> None:
    """`stop` interrupted (Ctrl-C) while the job ignores SIGTERM: the job goes on, and when it
    ends by itself with 0 it reads succeeded (the stop request stayed: it read stopped)."""
    sandbox.write("stubborn.py", TERM_IGNORED)
    go = sandbox.root / "go"
    sandbox.cli("start", "--cpu", "--name", "stub", "stubborn.py", str(go), check=True)
    wait_log(sandbox, "stub", "ready")
    stop = subprocess.Popen(
        [sys.executable, "-m", "handyjobs", "stop", "stub", "--timeout", "60"],
        env=sandbox.env,
        cwd=sandbox.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_log(sandbox, "stub", "got TERM")
    stop.send_signal(signal.SIGINT)
    assert stop.wait(timeout=30) == 130
    assert show(sandbox, "stub")["runs"][-1]["stop_requested"] is False
    go.touch()
    done = wait_state(sandbox, "stub", "succeeded", "stopped", "failed")
    assert done["state"] == "succeeded", done


def test_a_start_killed_after_saving_its_record_leaves_no_environment_in_pending(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that dies after its record is saved, before it moved the caller's environment
    into the job's folder (the runner is already launched): the runner finishes the move and
    runs the job; nothing is left in pending/ (the environment stayed there, and the job
    failed to start)."""
    from handyjobs.core import starting
    from handyjobs.core.spec import StartRequest

    def killed(*_: object) -> None:
        raise KeyboardInterrupt  # what a kill at that point leaves behind

    script = sandbox.write("quick.py", "import os\nprint('ran', os.environ['MINE'], flush=True)\n")
    monkeypatch.setattr(starting, "place_envs", killed)
    env = {**sandbox.env, "MINE": "kept"}
    with pytest.raises(KeyboardInterrupt):
        starting.start_job(
            StartRequest(
                script=str(script), name="k", cpu=True, cwd=str(sandbox.root), caller_env=env
            )
        )
    done = wait_state(sandbox, "k", "succeeded", "failed", "lost")
    assert done["state"] == "succeeded", log_of(sandbox, "k")
    assert "ran kept" in log_of(sandbox, "k")
    assert list((sandbox.home / "pending").iterdir()) == []


def test_an_on_exit_hook_leaves_no_daemon_running(sandbox: Sandbox) -> None:
    """An --on-exit command that starts a daemon in a session of its own and returns: the
    daemon is ended with the hook (it went on running)."""
    pidfile = sandbox.root / "daemon.pid"
    hook = f"sh -c 'setsid sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}'"
    sandbox.write("quick.py", "print('ran', flush=True)\n")
    sandbox.cli("start", "--cpu", "--name", "h", "--on-exit", hook, "quick.py", check=True)
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the hook")
    pid = int(pidfile.read_text())
    try:
        wait_until(lambda: not _alive(pid), timeout=20, what="the hook's daemon to end")
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert wait_state(sandbox, "h", "succeeded")["state"] == "succeeded"


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie is not running)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


FILLS_THE_DISK = """
import sys, time
with open(sys.argv[1], "wb") as f:
    while True:
        try:
            f.write(b"x" * 65536); f.flush()
        except OSError:
            time.sleep(0.05)  # full: it keeps trying, as a job writing checkpoints would
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount a small tmpfs)")
def test_stop_ends_a_job_that_filled_the_disk(sandbox: Sandbox) -> None:
    """A job that fills the disk its state folder is on: `stop` ends it (the mark could not
    be saved, so it refused and the job went on), says in one line that it could not record
    it, and once room is freed the run reads as ended, not running."""
    small = sandbox.root / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", small], check=True)
    try:
        env = {"HANDYJOBS_HOME": str(small / "state")}
        hog = small / "hog"
        sandbox.write("fill.py", FILLS_THE_DISK)
        sandbox.cli("start", "--cpu", "--name", "hog", "fill.py", str(hog), env=env, check=True)
        wait_until(lambda: hog.exists() and os.statvfs(small).f_bavail == 0, what="a full disk")
        with contextlib.suppress(OSError), open(small / "filler", "wb", buffering=0) as f:
            for size in (4096, 512, 1):  # the last bytes too: no write of the CLI fits
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * size)
        main = show(sandbox, "hog", env=env)["runs"][-1]["main"]["pid"]
        stop = sandbox.cli("stop", "hog", "--timeout", "2", env=env)
        # The mark could not be saved; the job is ended all the same, and its runner, giving
        # back the room it reserved for the outcome, makes room for the record of it.
        assert stop.returncode in (0, 1) and stop.stderr.count("\n") <= 1, stop.stderr
        assert "ended job hog" in stop.stderr or "stopped job hog" in stop.stdout
        wait_until(lambda: not _alive(main), timeout=20, what="the job to end")
        hog.unlink()
        done = wait_state(sandbox, "hog", "stopped", "failed", "lost", env=env)
        assert done["state"] in ("stopped", "failed"), done
    finally:
        subprocess.run(["umount", "-l", small], check=False)
