"""A sweep on Slurm as one job array, without Slurm: the array's batch script (read, and run by
bash for one task), squeue's and scontrol's lines for array tasks, the sweep's ``--parallel``.

The last tests submit through the real backend to stand-in Slurm commands on PATH (a shell
``sbatch`` that notes what it got and answers as Slurm does), so the files a sweep leaves, or
does not leave when sbatch refuses, are checked in milliseconds; tests/test_slurm_arrays.py
does the same on a real Slurm.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import Sandbox, run_in_process

from handyjobs.backends.slurm import backend, describe, sbatch
from handyjobs.core.records import JobSpec, JobState

RUNNER = ["/usr/bin/python3", "-m", "handyjobs.jobside.runner", "/h"]


def _spec(**slurm: object) -> JobSpec:
    checked = sbatch.check(sbatch.SlurmRequest(**slurm))  # type: ignore[arg-type]
    return JobSpec(script="/w/lr.py", nproc=1, cpu=True, slurm=checked, group="lr-sweep")


def _points(n: int, root: str = "/h/jobs") -> list[sbatch.ArrayPoint]:
    names = [f"lr-lr{i + 1}" for i in range(n)]
    return [
        sbatch.ArrayPoint(name, 1, f"run{i}", [*RUNNER, name, f"run{i}"], f"{root}/{name}")
        for i, name in enumerate(names)
    ]


def test_the_array_script_throttles_and_runs_point_i_in_task_i() -> None:
    text = sbatch.array_script(_spec(), "lr-sweep", _points(4), throttle=2)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in (
        "#SBATCH --job-name=lr-sweep",
        "#SBATCH --array=0-3%2",
        "#SBATCH --nodes=1",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --export=NONE",
        # A task's own output goes to its job's folder (the branch says where), not to one file.
        "#SBATCH --output=/dev/null",
    ):
        assert directive in lines, text
    at = lines.index('case "$SLURM_ARRAY_TASK_ID" in')
    assert all(not line.startswith("#SBATCH") for line in lines[at:])
    assert lines[at + 1 : at + 7] == [
        "0)  # job lr-lr1, run 1 (run id run0)",
        '    exec >>/h/jobs/lr-lr1/slurm-"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.out" 2>&1',
        "    export HANDYJOBS_RUNNER_OF=run0",
        "    export HANDYJOBS_SCHEDULED=slurm",
        "    exec /usr/bin/python3 -m handyjobs.jobside.runner /h lr-lr1 run0",
        "    ;;",
    ]
    assert "3)  # job lr-lr4, run 1 (run id run3)" in lines
    assert lines[-3:-1] == [
        "esac",
        'echo "handyjobs: array task $SLURM_ARRAY_TASK_ID has no job in this script" >&2',
    ]
    # No throttle: every task may run at once.
    assert "#SBATCH --array=0-3" in sbatch.array_script(_spec(), "g", _points(4)).splitlines()


def test_each_branch_starts_its_runner_as_the_one_job_script_does() -> None:
    spec = _spec(setup=("module load cuda/12.4",))
    point = _points(3)[2]
    one = sbatch.script(spec, point.name, 1, point.run_id, point.runner, point.job_dir)
    tail = one.splitlines()[one.splitlines().index("env -0 > /h/jobs/lr-lr3/setup-env-run2") :]
    lines = sbatch.array_script(spec, "lr-sweep", _points(3), throttle=1).splitlines()
    start = lines.index("2)  # job lr-lr3, run 1 (run id run2)") + 2  # after the output line
    assert [line.removeprefix("    ") for line in lines[start : start + len(tail)]] == tail
    assert tail[-1] == f"exec {' '.join(point.runner)}"


def test_bash_runs_the_branch_of_its_task_and_refuses_a_task_it_lacks(tmp_path: Path) -> None:
    points = [
        sbatch.ArrayPoint(f"p{i}", 1, f"r{i}", ["echo", f"point {i}"], str(tmp_path / f"p{i}"))
        for i in range(3)
    ]
    for point in points:
        Path(point.job_dir).mkdir()
    script = tmp_path / "array.sbatch"
    script.write_text(sbatch.array_script(_spec(), "g", points, throttle=2))
    env = {"PATH": os.environ["PATH"], "SLURM_ARRAY_JOB_ID": "77"}
    done = subprocess.run(
        ["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": "1"}, capture_output=True
    )
    assert done.returncode == 0
    # The runner's own output lands in its job's folder, named as Slurm names the task.
    assert (tmp_path / "p1" / "slurm-77_1.out").read_text() == "point 1\n"
    assert not (tmp_path / "p0" / "slurm-77_0.out").exists()
    missing = subprocess.run(
        ["bash", str(script)],
        env={**env, "SLURM_ARRAY_TASK_ID": "7"},
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "array task 7 has no job" in missing.stderr


def test_squeue_lines_of_an_array_give_each_task_its_own_state() -> None:
    # `squeue -r -O JobArrayID:|,...` as Slurm 22.05 printed it for `--array=0-3%2`, and the
    # one line a pending rest of the array gets without -r.
    text = "\n".join(
        [
            "5_0|RUNNING|None|n1|0|",
            "5_1|RUNNING|None|n2|0|",
            "5_2|PENDING|JobArrayTaskLimit||0|",
            "9_[3-4,7%2]|PENDING|JobArrayTaskLimit||0|",
            "12|COMPLETED|None|n1|0|",
        ]
    )
    jobs = backend.parse_squeue(text)
    assert sorted(jobs) == ["12", "5_0", "5_1", "5_2", "9_3", "9_4", "9_7"]
    assert jobs["5_1"].verdict is JobState.RUNNING and jobs["5_1"].nodes == "n2"
    assert jobs["9_7"].verdict is JobState.QUEUED and jobs["9_7"].reason == "JobArrayTaskLimit"
    assert jobs["9_7"].job_id == "9_7"
    assert jobs["12"].verdict is JobState.SUCCEEDED
    # The throttle's reason in words, for `list` and `show`.
    assert "--parallel" in (describe.Describe().reason_words("JobArrayTaskLimit") or "")


def test_scontrol_names_an_array_task_as_its_handle_does() -> None:
    running = (
        "JobId=3 ArrayJobId=1 ArrayTaskId=1 ArrayTaskThrottle=2 JobName=lr-sweep "
        "JobState=RUNNING Reason=None Restarts=0 ExitCode=0:0 NodeList=n1"
    )
    view = backend.parse_scontrol(running)
    assert view is not None and (view.job_id, view.verdict) == ("1_1", JobState.RUNNING)
    # A task still in the array's pending record is answered with its own task id.
    pending = (
        "JobId=1 ArrayJobId=1 ArrayTaskId=3 ArrayTaskThrottle=2 JobName=lr-sweep "
        "JobState=PENDING Reason=JobArrayTaskLimit Restarts=0 ExitCode=0:0 NodeList="
    )
    view = backend.parse_scontrol(pending)
    assert view is not None and (view.job_id, view.reason) == ("1_3", "JobArrayTaskLimit")
    # The array's own record (asked by its number) stays the job it names.
    whole = "JobId=1 ArrayJobId=1 ArrayTaskId=2-3%2 JobState=PENDING Reason=JobArrayTaskLimit"
    view = backend.parse_scontrol(whole)
    assert view is not None and view.job_id == "1"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--parallel", "0"], "--parallel 0: give how many"),
        (["--parallel=-2"], "--parallel -2: give how many"),
        (["--parallel", "two"], "'two' is not a valid integer"),
        (["--slurm", "--slurm-arg=--array=0-9"], "makes the job array itself"),
    ],
)
def test_bad_parallel_or_array_is_one_usage_line(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    sandbox.write("lr.py", "")
    code, out, err = run_in_process(
        ["sweep", str(sandbox.root / "lr.py"), "--grid", "lr=1,2", *argv], capsys
    )
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (sandbox.home / "jobs").exists() or not any((sandbox.home / "jobs").iterdir())


def _stand_in_slurm(box: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Shell stand-ins for Slurm's commands, first on PATH; ``sbatch`` notes its argv and the
    script it got, and refuses while a file ``refuse`` exists."""
    bindir = box.root / "bin"
    bindir.mkdir()
    notes = box.root / "sbatch-calls"
    (bindir / "sbatch").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {notes}\n'
        "for last; do :; done\n"
        f'cp "$last" {box.root}/submitted.sbatch\n'
        f"if [ -e {box.root}/refuse ]; then\n"
        '  echo "sbatch: error: Batch job submission failed: Invalid partition name" >&2\n'
        "  exit 1\n"
        "fi\n"
        "echo 42\n"
    )
    for name in ("squeue", "scancel", "scontrol", "sinfo"):
        (bindir / name).write_text("#!/bin/sh\nexit 0\n")
    for exe in bindir.iterdir():
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_CONF", str(box.root / "no-slurm.conf"))
    return notes


def test_a_slurm_sweep_is_one_sbatch_and_each_point_keeps_its_task(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = _stand_in_slurm(sandbox, monkeypatch)
    sandbox.write("lr.py", "")
    argv = ["sweep", str(sandbox.root / "lr.py"), "--grid", "lr=1,2,3", "--slurm", "--cpu"]
    code, out, err = run_in_process([*argv, "--parallel", "2"], capsys)
    assert code == 0, err
    assert len(notes.read_text().splitlines()) == 1  # one submission for the whole sweep
    assert "#SBATCH --array=0-2%2" in (sandbox.root / "submitted.sbatch").read_text()
    for i in range(3):
        assert f"submitted lr-lr{i + 1} to Slurm as job 42_{i}" in out
    scripts = sorted((sandbox.home / "jobs").glob("*/slurm-*.sbatch"))
    assert len(scripts) == 3 and len({s.stat().st_ino for s in scripts}) == 1  # linked, one copy
    saved = json.loads((sandbox.home / "registry.json").read_text())
    handles = sorted(json.dumps(saved).count(f'"42_{i}"') for i in range(3))
    assert handles == [1, 1, 1]


def test_a_refused_array_saves_nothing(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _stand_in_slurm(sandbox, monkeypatch)
    (sandbox.root / "refuse").touch()
    sandbox.write("lr.py", "")
    argv = ["sweep", str(sandbox.root / "lr.py"), "--grid", "lr=1,2,3", "--slurm", "--cpu"]
    code, out, err = run_in_process(argv, capsys)
    assert code == 2 and "sweep" not in out
    assert err.strip().splitlines() == [
        "handyjobs: error: sbatch refused the job: Batch job submission failed: Invalid "
        "partition name; change the Slurm options (see `sinfo` for partitions and nodes)"
    ]
    assert not list((sandbox.home / "jobs").iterdir())
    assert not any(p.is_file() for p in (sandbox.home / "pending").glob("*"))
    registry = sandbox.home / "registry.json"
    assert not registry.exists() or "lr-lr1" not in registry.read_text()
