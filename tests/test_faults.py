"""Faults, for real: reused pids, SIGKILLs, races, a full disk, read-only and missing folders.

Each test here reproduces a failure found on the first release and checks that it no longer
happens. Faults are real: real SIGKILLs, a real foreign process holding a reused pid (placed
there through ``/proc/sys/kernel/ns_last_pid``), a tmpfs that fills up, a read-only bind
mount. The ones that need root skip with that reason elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SLEEPER, Sandbox, log_of, show, wait_log, wait_state, wait_until

from handyjobs.core import procs, registry

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (mount, ns_last_pid, setuid)")

IGNORES_HUP = """
import os, signal, sys, time
signal.signal(signal.SIGHUP, signal.SIG_IGN)
print("pid", os.getpid(), flush=True)
while not os.path.exists(sys.argv[1] if len(sys.argv) > 1 else "/nonexistent-never"):
    time.sleep(0.05)
"""


def _run(box: Sandbox, name: str) -> dict[str, Any]:
    """The current run of a job, as ``show --json`` has it."""
    return show(box, name)["runs"][-1]  # type: ignore[no-any-return]


def _started(box: Sandbox, name: str) -> dict[str, Any]:
    """Wait until the job printed its pid (its main process is up), then return its run."""
    wait_log(box, name, "pid", 30, what=f"{name} to start")
    return _run(box, name)


def _gone(pid: int) -> bool:
    return not procs.is_running(pid)


def _kill_and_wait(pid: int, reaped: bool = True) -> None:
    """SIGKILL ``pid`` and wait until it is reaped (its pid free for reuse), or with ``reaped``
    False only until it is dead: an orphan is reaped by whoever adopts it, when it likes."""
    from handyjobs.core.paths import pid_alive

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if reaped:
        wait_until(lambda: not pid_alive(pid), 10, what=f"pid {pid} to be reaped")
    else:
        wait_until(lambda: _gone(pid), 10, what=f"pid {pid} to end")


def _spawn_with_pid(pid: int, argv: list[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a process with exactly this pid (root: through ns_last_pid)."""
    for _ in range(200):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    pytest.fail(f"could not place a process on pid {pid}")


def _one_line_error(proc: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


# ---- 1. stop touches only what is the job's ------------------------------------------------


@needs_root
def test_reused_pids_of_a_killed_runner_are_never_signalled(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", SLEEPER)
    sandbox.cli("start", "sleep.py", "--name", "victim", check=True)
    run = _started(sandbox, "victim")
    runner, main = run["runner"]["pid"], run["main"]["pid"]
    _kill_and_wait(runner)
    _kill_and_wait(main)
    # Foreign processes take the recorded pids; one even looks like a runner of this run.
    foreign_main = _spawn_with_pid(main, ["sleep", "60"])
    fake_runner = [sys.executable, "-c", "import time; time.sleep(60)", "handyjobs.jobside.runner"]
    foreign_runner = _spawn_with_pid(runner, [*fake_runner, str(sandbox.home), "victim"])
    try:
        rec = show(sandbox, "victim")
        assert rec["state"] == "lost"
        assert rec["reason"]["kind"] == "runner_died"
        proc = sandbox.cli("stop", "victim")
        assert "not running (it lost)" in _one_line_error(proc)
        time.sleep(0.3)
        assert foreign_main.poll() is None and foreign_runner.poll() is None
    finally:
        for p in (foreign_main, foreign_runner):
            p.kill()
            p.wait()


def _reuse_runner_pid(box: Sandbox, name: str, pid: int) -> None:
    """Make ``name``'s recorded runner pid name ``pid``, keeping the recorded start time.

    That is what the registry holds after the kernel handed the runner's pid to another
    process: the same number, a process that started later.
    """
    from handyjobs.core.records import ProcId

    with registry.locked(box.home) as reg:
        record = reg.get(name)
        assert record is not None and record.runs[-1].runner is not None
        run = record.runs[-1]
        assert run.runner is not None
        run.runner = ProcId(pid, run.runner.start)
        reg.put(record)


def test_a_pid_reused_by_another_jobs_runner_is_not_taken_for_ours(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", SLEEPER)
    sandbox.cli("start", "sleep.py", "--name", "a", check=True)
    sandbox.cli("start", "sleep.py", "--name", "b", check=True)
    run_a, run_b = _started(sandbox, "a"), _started(sandbox, "b")
    # Nothing lands on these pids here (the reuse is written into the record below): dead is
    # enough, reaped is up to whoever adopted the orphaned main process.
    _kill_and_wait(run_a["runner"]["pid"], reaped=False)
    _kill_and_wait(run_a["main"]["pid"], reaped=False)
    # Another job's runner ends up on a's old runner pid. Landing a chosen pid fails whenever
    # anything else on the machine forks in between, so the reuse is written into a's record
    # before any command looks at it: a's runner pid is now b's live runner, with a's own start
    # time, exactly what the registry holds after the kernel reused the pid.
    _reuse_runner_pid(sandbox, "a", run_b["runner"]["pid"])
    assert procs.is_running(run_b["runner"]["pid"])
    rec = show(sandbox, "a")
    assert rec["state"] == "lost" and rec["reason"]["kind"] == "runner_died"
    assert "not running" in _one_line_error(sandbox.cli("stop", "a"))
    assert procs.is_running(run_b["runner"]["pid"])  # the other job's runner was left alone
    assert show(sandbox, "b")["state"] == "running"
    sandbox.cli("stop", "b", check=True)
    assert show(sandbox, "b")["state"] == "stopped"


def test_sessions_we_did_not_tag_are_never_killed(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", SLEEPER)
    sandbox.tmux("new-session", "-d", "-s", "exp", "sleep", "300")  # the user's own session
    out = sandbox.cli("start", "sleep.py", "--name", "exp", check=True).stdout
    assert "tmux session exp-r1" in out
    _started(sandbox, "exp")
    sandbox.cli("stop", "exp", check=True)
    out = sandbox.cli("restart", "exp", check=True).stdout
    assert "run 2" in out
    assert show(sandbox, "exp")["session"] == "exp-r2"
    sandbox.cli("stop", "exp", check=True)
    names = sandbox.tmux("list-sessions", "-F", "#{session_name}").stdout.split()
    assert "exp" in names  # still there after start, stop and restart


# ---- 2. stop and restart of one job at the same moment ---------------------------------


def _marked_alive(run_id: str) -> bool:
    return bool(procs.members(run_id))


def test_stop_and_restart_at_the_same_moment_agree_with_reality(sandbox: Sandbox) -> None:
    from handyjobs.core import jobs

    sandbox.write("sleep.py", SLEEPER)
    cli = [sys.executable, "-m", "handyjobs"]

    def log(name: str) -> str:  # read directly: this test runs 25 rounds
        return (sandbox.home / "jobs" / name / "output.log").read_text()

    for i in range(25):
        name = f"race{i}"
        sandbox.cli("start", "sleep.py", "--name", name, check=True)
        wait_until(lambda n=name: "pid" in log(n), 20, what="the job to start")  # type: ignore[misc]
        order = ("stop", "restart") if i % 2 else ("restart", "stop")
        launched = {
            verb: subprocess.Popen(
                [*cli, verb, name],
                env=sandbox.env,
                cwd=sandbox.root,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for verb in order
        }
        _, stop_err = launched["stop"].communicate(timeout=60)
        restart_out, restart_err = launched["restart"].communicate(timeout=60)
        stop_rc, restart_rc = launched["stop"].returncode, launched["restart"].returncode
        assert stop_rc == 0 or "not running" in stop_err, stop_err
        assert restart_rc == 0, restart_err
        record = jobs.get_job(name)
        run1, run2 = record.runs  # exactly two runs
        assert run1.state.value == "stopped"
        assert not _marked_alive(run1.run_id)
        assert "restarted" in restart_out and "run 2" in restart_out
        assert run2.runner is not None
        if run2.state.value == "stopped":
            # The stop came after the restart (the two commands raced): it stopped run 2,
            # and then nothing of run 2 may be left.
            assert run2.stop_requested
            assert not procs.is_same(run2.runner) and not _marked_alive(run2.run_id)
            continue
        # Otherwise restart's run 2 runs, for real, with its own runner.
        assert record.state.value == "running", record.state
        wait_until(lambda n=name: "run 2 of" in log(n), 20, what="run 2 to start")  # type: ignore[misc]
        assert procs.is_same(run2.runner)
        sandbox.cli("stop", name, check=True)
        assert jobs.get_job(name).state.value == "stopped"
        assert not _marked_alive(run2.run_id)


def test_rm_logs_racing_a_start_of_the_same_name_never_deletes_the_new_jobs_files(
    sandbox: Sandbox,
) -> None:
    """``rm --logs x`` and ``start --name x`` run at the same moment, 16 times, 8 in each
    order (the unsafe removal this guards against was caught by the 5th): whenever the start
    succeeds its job has its folder and its whole log, and the removed job's lines are not in
    it; when the start comes first it is refused."""
    import random

    sandbox.write("say.py", "import sys\nprint('I am', sys.argv[1], flush=True)\n")
    cli = [sys.executable, "-m", "handyjobs"]
    folder = sandbox.home / "jobs" / "x"

    def launch(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*cli, *args],
            env=sandbox.env,
            cwd=sandbox.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    sandbox.cli("start", "say.py", "--name", "x", "--", "gen0", check=True)
    sandbox.cli("wait", "x", check=True)
    rng = random.Random(5)
    outcomes = {"started": 0, "refused": 0}
    for i in range(1, 17):
        first, second = ("rm", "start") if i % 2 else ("start", "rm")
        argv = {
            "rm": ("rm", "--logs", "x"),
            "start": ("start", "say.py", "--name", "x", "--", f"gen{i}"),
        }
        procs_ = {first: launch(*argv[first])}
        time.sleep(rng.uniform(0, 0.3))  # somewhere in the other's start-up or its lock
        procs_[second] = launch(*argv[second])
        _, start_err = procs_["start"].communicate(timeout=120)
        _, rm_err = procs_["rm"].communicate(timeout=120)
        assert procs_["rm"].returncode == 0, rm_err  # x had ended: removed before or after
        if procs_["start"].returncode != 0:
            assert "a job named x exists" in start_err, start_err  # it came before the rm
            outcomes["refused"] += 1
            sandbox.cli("start", "say.py", "--name", "x", "--", f"gen{i}", check=True)
        else:
            outcomes["started"] += 1
        done = sandbox.cli("wait", "x")
        assert done.returncode == 0, (i, outcomes, done.stderr)
        log = (folder / "output.log").read_text()
        assert f"I am gen{i}\n" in log and f"I am gen{i - 1}\n" not in log, (i, log)
        assert show(sandbox, "x")["log_path"] == str(folder / "output.log")
    assert outcomes["started"] > 0, outcomes


# ---- 3. nothing left running ---------------------------------------------------------------


def test_sigkill_of_torchrun_ends_its_workers(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", SLEEPER)
    sandbox.cli("start", "sleep.py", "--cpu", "--nproc", "2", "--name", "tr", check=True)
    wait_log(
        sandbox,
        "tr",
        lambda log: "rank 0" in log and "rank 1" in log,
        60,
        what="both ranks",
    )
    run = _run(sandbox, "tr")
    workers = procs.members(run["run_id"])
    assert len(workers) == 5  # torchrun, and for each rank its wrapper and its worker
    os.kill(run["main"]["pid"], signal.SIGKILL)
    rec = wait_state(sandbox, "tr", "failed")
    assert rec["signal"] == signal.SIGKILL and rec["runs"][-1]["leftovers"] == 4
    assert not procs.members(run["run_id"])
    assert all(_gone(pid) for pid in workers)


def test_runner_killed_leaves_lost_with_leftovers_that_stop_ends(sandbox: Sandbox) -> None:
    sandbox.write("hup.py", IGNORES_HUP)
    sandbox.cli("start", "hup.py", "--name", "stubborn", check=True)
    run = _started(sandbox, "stubborn")
    _kill_and_wait(run["runner"]["pid"])
    rec = show(sandbox, "stubborn")
    assert rec["state"] == "lost" and rec["reason"]["pids"] == [run["main"]["pid"]]
    text = sandbox.cli("show", "stubborn", check=True).stdout
    assert "its runner ended without recording an outcome" in text and "handyjobs stop" in text
    assert not _gone(run["main"]["pid"])  # it ignored the hangup: still running
    out = sandbox.cli("stop", "stubborn", check=True).stdout
    assert "was lost; ended what was left of it (1 process ended)" in out
    assert _gone(run["main"]["pid"])
    assert show(sandbox, "stubborn")["reason"]["pids"] == []


def test_killing_the_tmux_server_ends_the_job_and_says_lost(sandbox: Sandbox) -> None:
    sandbox.write("hup.py", IGNORES_HUP)
    sandbox.cli("start", "hup.py", "--name", "hup", check=True)
    run = _started(sandbox, "hup")
    sandbox.tmux("kill-server")
    rec = wait_state(sandbox, "hup", "lost", timeout=30)
    assert rec["reason"]["kind"] == "session_gone"
    wait_until(lambda: _gone(run["main"]["pid"]), 15, what="the job to be ended")
    assert not procs.members(run["run_id"])


def test_rm_of_a_lost_job_with_leftovers_needs_force_and_ends_them(sandbox: Sandbox) -> None:
    sandbox.write("hup.py", IGNORES_HUP)
    sandbox.cli("start", "hup.py", "--name", "left", check=True)
    run = _started(sandbox, "left")
    _kill_and_wait(run["runner"]["pid"])
    assert "--force" in _one_line_error(sandbox.cli("rm", "left"))
    sandbox.cli("rm", "--force", "left", check=True)
    assert _gone(run["main"]["pid"])
    assert sandbox.cli("show", "left").returncode == 1


# ---- 4. the lock cannot be bypassed ---------------------------------------------------------


def test_deleting_the_lock_during_25_starts_loses_none(sandbox: Sandbox) -> None:
    sandbox.write("hello.py", "import os\nprint('hello from', os.environ['HANDYJOBS_JOB'])\n")
    sandbox.cli("list", check=True)
    starts = [
        subprocess.Popen(
            [sys.executable, "-m", "handyjobs", "start", "hello.py", "--name", f"s{i}"],
            env=sandbox.env,
            cwd=sandbox.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(25)
    ]
    while any(p.poll() is None for p in starts):
        for name in ("registry.lock", "scheduler.lock"):
            with contextlib.suppress(FileNotFoundError):
                (sandbox.home / name).unlink()
        time.sleep(0.002)
    assert [p.wait() for p in starts] == [0] * 25
    names = {f"s{i}" for i in range(25)}

    def ended() -> set[str]:
        return {r.name for r in registry.load_all(sandbox.home) if not r.state.active}

    # Read in this process, then once through the CLI: 25 jobs waited on one by one through
    # `show` and `logs` cost 50 CLI start-ups.
    wait_until(lambda: ended() == names, 120, what="the 25 jobs to end")
    listed = json.loads(sandbox.cli("list", "--all", "--json", check=True).stdout)
    assert {d["name"]: d["state"] for d in listed} == dict.fromkeys(names, "succeeded")
    for name in names:
        assert f"hello from {name}" in (sandbox.home / "jobs" / name / "output.log").read_text()
    recorded = {r.name for r in registry.load_all(sandbox.home)}
    assert recorded == names


# ---- 5. full disk, read-only and missing folders ---------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    options = f"size={size},mode=0700"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


def _fill(folder: Path) -> Path:
    """Write a file until the disk is full; return it (delete it to free the room)."""
    filler = folder / "filler"
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return filler


def _temps(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp-" in p.name]


@needs_root
def test_full_disk_gives_one_line_and_never_loses_an_exit_code(sandbox: Sandbox) -> None:
    with _tmpfs(sandbox.root / "small", "4m") as home:
        env = {"HANDYJOBS_HOME": str(home / "state")}
        sandbox.write("sleep.py", SLEEPER)
        fills = (
            "import sys\n"
            "with open(sys.argv[1], 'wb') as f:\n"
            "    try:\n"
            "        while True:\n"
            "            f.write(b'x' * 65536); f.flush()\n"
            "    except OSError as e:\n"
            "        print('disk full:', e.strerror, flush=True)\n"
            "for i in range(2000):\n"
            "    print('more output that the log cannot take', i)\n"
            "raise SystemExit(3)\n"
        )
        sandbox.write("fill.py", fills)
        sandbox.cli("start", "sleep.py", "--name", "live", env=env, check=True)
        sandbox.cli(
            "start", "fill.py", "--name", "filler", "--", str(home / "hog"), env=env, check=True
        )
        rec = wait_state_env(sandbox, "filler", env, "failed", "succeeded", "lost")
        assert rec["state"] == "failed" and rec["exit_code"] == 3  # not lost
        text = sandbox.cli("show", "filler", env=env, check=True).stdout
        assert "not all written" in text and "No space left on device" in text
        # Every command on the full disk: one line and exit 1 for writers, reads still work.
        filler = _fill(home)  # what the runner gave back when it finished is taken again
        assert sandbox.cli("list", env=env, check=True).stdout.count("filler") == 1
        for args in (
            ["start", "sleep.py", "--name", "more"],  # stop ends a job here all the same:
            ["rm", "filler"],  # tests/test_hostile.py::test_stop_ends_a_job_that_filled_the_disk
            ["clean"],
            ["restart", "filler"],
        ):
            err = _one_line_error(sandbox.cli(*args, env=env))
            assert "No space left on device" in err and "free some space" in err, args
        assert _temps(home) == []
        (home / "hog").unlink()
        filler.unlink()
        sandbox.cli("stop", "live", env=env, check=True)
        assert json.loads(sandbox.cli("show", "filler", "--json", env=env).stdout)["exit_code"] == 3
        sandbox.cli("rm", "filler", env=env, check=True)


def wait_state_env(
    box: Sandbox, name: str, env: dict[str, str], *states: str, timeout: float = 60
) -> dict[str, Any]:
    """Like conftest.wait_state, under another environment."""
    return wait_state(box, name, *states, timeout=timeout, env=env)


@needs_root
def test_a_read_only_home_reads_but_refuses_writes_in_one_line(sandbox: Sandbox) -> None:
    sandbox.write("ok.py", "print('ok')\n")
    sandbox.cli("start", "ok.py", "--name", "done", check=True)
    wait_state(sandbox, "done", "succeeded")
    ro = sandbox.root / "ro"
    ro.mkdir(mode=0o700)
    subprocess.run(["mount", "--bind", sandbox.home, ro], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", ro], check=True)
        env = {"HANDYJOBS_HOME": str(ro)}
        assert "done" in sandbox.cli("list", env=env, check=True).stdout
        assert "succeeded" in sandbox.cli("show", "done", env=env, check=True).stdout
        for args in (["start", "ok.py", "--name", "x"], ["rm", "done"], ["clean"]):
            assert "read-only" in _one_line_error(sandbox.cli(*args, env=env)), args
    finally:
        subprocess.run(["umount", "-l", ro], check=False)


@needs_root
def test_missing_permissions_give_one_line(sandbox: Sandbox) -> None:
    # Root without its capabilities is held to permissions like anyone: a jobs/ folder that
    # belongs to someone else cannot be written into.
    from handyjobs.core import paths

    paths.ensure_home(sandbox.home)
    jobs_dir = sandbox.home / "jobs"
    jobs_dir.mkdir(mode=0o700)
    os.chown(jobs_dir, 65534, 65534)
    sandbox.write("ok.py", "print('ok')\n")
    proc = subprocess.run(
        [
            *("setpriv", "--bounding-set=-all", "--inh-caps=-all", "--", sys.executable),
            *("-m", "handyjobs", "start", "ok.py", "--name", "p"),
        ],
        env=sandbox.env,
        cwd=sandbox.root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    err = _one_line_error(proc)
    assert "Permission denied" in err and "permissions" in err
    assert registry.load_all(sandbox.home) == []


def test_deleting_a_running_jobs_folder_keeps_its_exit_code(sandbox: Sandbox) -> None:
    flag = sandbox.root / "flag"
    sandbox.write(
        "three.py",
        "import os, sys, time\nprint('pid', os.getpid(), flush=True)\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.05)\nraise SystemExit(3)\n",
    )
    sandbox.cli("start", "three.py", "--name", "orphaned", "--", str(flag), check=True)
    _started(sandbox, "orphaned")
    import shutil

    shutil.rmtree(sandbox.home / "jobs" / "orphaned")
    flag.touch()
    rec = wait_state(sandbox, "orphaned", "failed", "lost")
    assert rec["state"] == "failed" and rec["exit_code"] == 3
    err = _one_line_error(sandbox.cli("logs", "orphaned"))
    assert "log of job orphaned is missing" in err


@pytest.mark.parametrize("kind", ["dangling", "file", "shared"])
def test_a_bad_home_is_one_line_and_never_chmodded(sandbox: Sandbox, kind: str) -> None:
    bad = sandbox.root / "bad-home"
    if kind == "dangling":
        bad.symlink_to(sandbox.root / "nowhere")
    elif kind == "file":
        bad.write_text("not a folder")
    else:
        bad.mkdir()
        bad.chmod(0o1777)
    sandbox.write("ok.py", "print('ok')\n")
    for args in (["list"], ["start", "ok.py"], ["show", "x"]):
        _one_line_error(sandbox.cli(*args, env={"HANDYJOBS_HOME": str(bad)}), code=2)
    if kind == "shared":
        assert stat.S_IMODE(bad.stat().st_mode) == 0o1777


# ---- 6. no environment file outlives its start ---------------------------------------------


def test_a_start_killed_before_its_session_leaves_no_environment(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", SLEEPER)
    sandbox.cli("list", check=True)
    pending = sandbox.home / "pending"
    caught = 0
    for i in range(40):
        proc = subprocess.Popen(
            [sys.executable, "-m", "handyjobs", "start", "sleep.py", "--name", f"k{i}"],
            env={**sandbox.env, "SECRET_TOKEN": "hunter2"},
            cwd=sandbox.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while proc.poll() is None:
            if pending.is_dir() and any(pending.iterdir()):
                proc.send_signal(signal.SIGKILL)  # between the file and the saved record
                caught += 1
                break
        proc.wait()
        if caught >= 3:
            break
    assert caught, "never caught a start with its environment file written"
    sandbox.cli("start", "sleep.py", "--name", "next", check=True)  # sweeps under its lock
    assert list(pending.iterdir()) == []
    recorded = {r.name for r in registry.load_all(sandbox.home)}
    for env_file in (sandbox.home / "jobs").glob("*/env.json"):
        assert env_file.parent.name in recorded, "a caller's environment with no record"
    for record in registry.load_active(sandbox.home):
        sandbox.cli("stop", record.name, check=True)


# ---- 8. permissions ------------------------------------------------------------------------


def test_everything_is_private_whatever_the_umask(sandbox: Sandbox) -> None:
    sandbox.write("ok.py", "print('ok')\n")
    proc = subprocess.run(
        [sys.executable, "-m", "handyjobs", "start", "ok.py", "--name", "u"],
        env=sandbox.env,
        cwd=sandbox.root,
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.umask(0),
        check=True,
    )
    assert proc.returncode == 0
    wait_state(sandbox, "u", "succeeded")
    for path in [sandbox.home, *sandbox.home.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


# ---- 9. one clear line, every time ------------------------------------------------------------


def test_several_names_are_each_handled_once(sandbox: Sandbox) -> None:
    sandbox.write("sleep.py", SLEEPER)
    sandbox.write("ok.py", "print('ok')\n")
    sandbox.cli("start", "ok.py", "--name", "x", check=True)
    wait_state(sandbox, "x", "succeeded")
    proc = sandbox.cli("rm", "x", "x")
    # Once: the second x names the same job. Its kept log's place follows on the same line.
    assert proc.returncode == 0 and proc.stdout.count("removed x") == 1
    assert proc.stdout.count("\n") == 1
    sandbox.cli("start", "sleep.py", "--name", "b", check=True)
    proc = sandbox.cli("stop", "a", "b", "a")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "no job named a" in proc.stderr
    assert "stopped job b" in proc.stdout
    assert show(sandbox, "b")["state"] == "stopped"


def test_control_characters_are_shown_escaped(sandbox: Sandbox) -> None:
    sandbox.write("ok.py", "print('ok')\n")
    sandbox.cli("start", "ok.py", "--name", "esc", "--", "line1\nline2", "\x1b[2J", check=True)
    wait_state(sandbox, "esc", "succeeded")
    listed = sandbox.cli("list", check=True).stdout
    assert "line1\\nline2" in listed and "\\x1b[2J" in listed and "\x1b" not in listed
    assert len(listed.splitlines()) == 2
    shown = sandbox.cli("show", "esc", check=True).stdout
    assert "\x1b" not in shown and "line1\\nline2" in shown
    header = log_of(sandbox, "esc").splitlines()[0]
    assert header.startswith("[handyjobs] run 1") and "\\x1b[2J" in header


def test_names_must_start_with_a_letter_or_digit(sandbox: Sandbox) -> None:
    sandbox.write("ok.py", "print('ok')\n")
    for bad in ("-x", "_x"):
        err = _one_line_error(sandbox.cli("start", "ok.py", f"--name={bad}"), code=2)
        assert "starting with a letter or digit" in err


def test_bare_command_prints_short_help_and_attach_needs_a_terminal(sandbox: Sandbox) -> None:
    proc = sandbox.cli()
    assert proc.returncode == 0 and proc.stdout.startswith("usage: handyjobs COMMAND")
    assert len(proc.stdout.splitlines()) <= 25 and proc.stderr == ""
    sandbox.write("sleep.py", SLEEPER)
    sandbox.cli("start", "sleep.py", "--name", "live", check=True)
    err = _one_line_error(sandbox.cli("attach", "live"))
    assert "needs a terminal" in err and "handyjobs logs live -f" in err
    sandbox.cli("stop", "live", check=True)


# ---- 10. writers never read the history ---------------------------------------------------


def test_a_damaged_old_record_does_not_stop_writers(sandbox: Sandbox) -> None:
    from conftest import make_record

    with registry.locked(sandbox.home) as reg:
        for i in range(200):
            reg.put(make_record(f"old-{i}"))
    history = sandbox.home / "history.jsonl"
    lines = history.read_bytes().split(b"\n")
    lines[50] = lines[50][:-40] + b"garbage"  # a damaged record deep in the history
    history.write_bytes(b"\n".join(lines))
    sandbox.write("sleep.py", SLEEPER)
    sandbox.cli("start", "sleep.py", "--name", "new", check=True)
    _started(sandbox, "new")
    sandbox.cli("stop", "new", check=True)
    assert show(sandbox, "new")["state"] == "stopped"
    assert "new" in sandbox.cli("list", check=True).stdout
