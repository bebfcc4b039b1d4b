"""Fast parts of the process controls and local limits: ``--time``/``--mem`` as ``start``
reads them, the queue of a paused group, ``kill --signal``'s signal names, the warning's
choice of processes, and the words for all of it. No tmux, no job started."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from handyjobs.cli import start as startcli
from handyjobs.cli.commands import command
from handyjobs.cli.kill import parse_signal
from handyjobs.cli.parse import parse
from handyjobs.core import booking, cgroups, limits
from handyjobs.core.records import (
    JobRecord,
    JobSpec,
    JobState,
    LostKind,
    Reason,
    Run,
    Wait,
    exit_summary,
    utcnow,
)
from handyjobs.core.spec import StartRequest
from handyjobs.errors import UsageError
from handyjobs.gpus.discovery import Discovery, GpuInfo
from handyjobs.jobside.limits import handles
from handyjobs.views import render

START = command("start")


def request(*argv: str) -> StartRequest:
    """The request ``handyjobs start ARGV`` makes (nothing is started)."""
    return startcli.make_request(parse(START, list(argv)))


# ---- --time, --signal-before, --mem ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2h30m", 9000),
        ("90m", 5400),
        ("45s", 45),
        ("1d", 86400),
        ("1h", 3600),
        ("1:30:00", 5400),  # HH:MM:SS
        ("90", 5400),  # plain minutes, as sbatch takes them
        ("5:30", 330),  # MM:SS
        ("1-12", 129600),  # D-HH
        ("2-0:30:15", 174615),  # D-HH:MM:SS
        (" 10M ", 600),
    ],
)
def test_durations_are_read_as_sbatch_and_people_write_them(text: str, seconds: int) -> None:
    assert limits.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "soon", "1h-2", "-5", "1.5h", "1:2:3:4", "h"])
def test_a_bad_duration_is_one_usage_line(text: str) -> None:
    with pytest.raises(UsageError, match=r"^--time .*: give a duration such as 2h30m"):
        limits.parse_duration(text)


def test_start_takes_the_limits_as_this_machine_s_when_not_sent_to_a_cluster() -> None:
    req = request("t.py", "--time", "2h30m", "--signal-before", "90", "--mem", "512M", "--", "x")
    assert (req.time_limit, req.signal_before, req.mem_limit) == ("2h30m", 90, "512M")
    assert req.backend is None and req.goes_to == "tmux"  # no cluster claims them
    assert list(req.args) == ["x"]
    fields = limits.spec_fields(StartRequest(script="t.py", time_limit="2h30m", signal_before=90))
    assert fields == {"time_limit": 9000, "signal_before": 90}


def test_with_a_cluster_the_same_options_are_its_scheduler_s() -> None:
    req = request("t.py", "--slurm", "--time", "90", "--mem", "64G", "--signal-before", "30")
    assert req.backend is not None and req.goes_to != "tmux"
    assert limits.spec_fields(req) == {}  # nothing enforced here: the scheduler has them
    spec = req.backend.check(req)["slurm"]
    assert (spec.time, spec.mem, spec.signal_before_s) == ("90", "64G", 30)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"signal_before": 10}, "--signal-before goes with --time"),
        ({"time_limit": "1m", "signal_before": 60}, "between 1 and the --time limit"),
        ({"time_limit": "1m", "signal_before": 0}, "between 1 and the --time limit"),
        ({"mem_limit": "lots"}, "--mem 'lots': give a size"),
    ],
)
def test_bad_limits_are_refused_in_one_line(kw: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        limits.spec_fields(StartRequest(script="t.py", **kw))  # type: ignore[arg-type]


def test_mem_is_refused_where_no_cgroup_can_take_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cgroups.USE_ENV, "0")
    assert not cgroups.can_limit_memory()
    with pytest.raises(UsageError, match=r"^--mem needs a cgroup with the memory controller"):
        limits.spec_fields(StartRequest(script="t.py", mem_limit="100M"))


def test_mem_is_taken_where_a_memory_controller_is_writable() -> None:
    if not cgroups.can_limit_memory():
        pytest.skip("no writable memory controller on this machine (cgroup v1 as root, or v2)")
    assert limits.spec_fields(StartRequest(script="t.py", mem_limit="100M")) == {
        "mem_limit": 100 << 20
    }


def test_the_warning_comes_60_s_early_or_at_half_a_short_limit() -> None:
    assert limits.warning_lead(3600, None) == 60
    assert limits.warning_lead(10, None) == 5
    assert limits.warning_lead(3600, 300) == 300


# ---- a paused group's queue -----------------------------------------------------------------


def _job(name: str, state: JobState, group: str | None, gpus: tuple[int, ...] = ()) -> JobRecord:
    run = Run(run=1, run_id=f"id-{name}", state=state, created_at=utcnow(), gpus=gpus)
    if state is not JobState.QUEUED:
        run.started_at = utcnow()
    spec = JobSpec(script="/p/t.py", group=group, gpus=gpus or None, wait=True)
    return JobRecord(name, spec, "/tmp/x.log", utcnow(), [run])


FOUR = Discovery(
    "fake",
    tuple(
        GpuInfo(
            index=i,
            uuid=f"GPU-{i}",
            name="A100",
            memory_used_mib=0,
            memory_total_mib=81920,
            utilization_pct=0,
        )
        for i in range(4)
    ),
)


def test_a_paused_group_starts_nothing_new_and_others_go_on() -> None:
    records = [
        _job("p", JobState.PAUSED, "g", gpus=(0,)),
        _job("g2", JobState.QUEUED, "g"),
        _job("other", JobState.QUEUED, "h"),
        _job("lone", JobState.QUEUED, None),
    ]
    plan = booking.plan(records, FOUR)
    assert set(plan.starts) == {"other", "lone"}
    wait = plan.waits["g2"]
    assert wait.paused and wait.group == "g"
    assert render.wait_text(wait).startswith("group g is paused")


def test_a_paused_run_keeps_its_gpus_and_its_slot() -> None:
    records = [_job("p", JobState.PAUSED, None, gpus=(0,)), _job("q", JobState.QUEUED, None)]
    records[1] = JobRecord(
        "q", JobSpec(script="/p/t.py", gpus=(0,), wait=True), "/tmp/q.log", utcnow(),
        records[1].runs,
    )  # fmt: skip
    assert booking.held_gpus(records) == {0: "p"}
    plan = booking.plan(records, FOUR)
    assert "q" not in plan.starts and plan.waits["q"].blockers[0].job == "p"
    slots = booking.plan([records[0], _job("r", JobState.QUEUED, None)], FOUR, None,
                         booking.Limits(total=1))  # fmt: skip
    assert plan.starts == {} and slots.waits["r"].limit == 1


# ---- words ------------------------------------------------------------------------------------


def test_a_run_ended_by_a_limit_says_so() -> None:
    run = Run(run=1, run_id="x", state=JobState.FAILED, created_at=utcnow(), exit_code=0)
    run.reason = Reason(LostKind.TIME_LIMIT, "5")
    assert exit_summary(run) == "TIMEOUT"
    assert render.reason_text(run.reason).startswith("time limit")
    run.reason, run.exit_code, run.signal = Reason(LostKind.OUT_OF_MEMORY, str(100 << 20)), None, 9
    assert exit_summary(run) == "OOM"
    assert render.reason_text(run.reason) == "out of memory: it went over its --mem of 100 MiB"


def test_a_paused_job_says_its_gpus_stay_booked() -> None:
    record = _job("p", JobState.PAUSED, None, gpus=(1, 3))
    assert render.state_text(record).startswith(
        "paused (its processes are stopped; GPUs 1,3 stay booked"
    )
    assert render.paused_text(()) == "its processes are stopped"
    assert JobState.PAUSED.active and Wait(0, 0, paused=True).for_gpus is False


# ---- kill --signal -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sig"),
    [("USR1", signal.SIGUSR1), ("SIGUSR1", signal.SIGUSR1), ("usr2", signal.SIGUSR2),
     ("10", 10), ("TERM", signal.SIGTERM), ("sigint", signal.SIGINT)],
)  # fmt: skip
def test_signals_by_name_or_number(text: str, sig: int) -> None:
    assert parse_signal(text) == sig


@pytest.mark.parametrize("text", ["USR3", "SIG", "0", "999", "", "SIG_DFL", "-9", "US R1"])
def test_a_bad_signal_is_one_usage_line(text: str) -> None:
    with pytest.raises(UsageError, match="is not a signal; give a name such as USR1"):
        parse_signal(text)


@pytest.mark.parametrize("text", ["STOP", "CONT", "SIGTSTP"])
def test_stop_and_continue_go_through_pause_and_resume(text: str) -> None:
    with pytest.raises(UsageError, match="use `handyjobs pause` and `resume`"):
        parse_signal(text)


# ---- which processes the warning reaches ----------------------------------------------------


@pytest.fixture
def listener() -> Iterator[subprocess.Popen[bytes]]:
    """A process that handles SIGUSR1 (and says so once it does)."""
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGUSR1, lambda *a: None)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield proc
    proc.kill()
    proc.wait()


def test_only_a_process_that_handles_the_warning_is_warned(
    listener: subprocess.Popen[bytes],
) -> None:
    deaf = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        deadline = time.monotonic() + 10
        while not handles(listener.pid, signal.SIGUSR1) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handles(listener.pid, signal.SIGUSR1)
        assert not handles(deaf.pid, signal.SIGUSR1)  # SIGUSR1 would kill it
        assert not handles(listener.pid, signal.SIGUSR2)
    finally:
        deaf.kill()
        deaf.wait()
