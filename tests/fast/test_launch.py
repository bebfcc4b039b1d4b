"""launch.build is pure: a case table of specs -> argv and environment."""

from __future__ import annotations

import pytest

from handyjobs.core.records import JobSpec
from handyjobs.jobside.launch import STANDALONE, RunContext, build

CTX = RunContext(name="exp1", run=2, run_id="r1", gpus=None, log_path="/s/exp1.log")
BASE = {
    "PATH": "/usr/bin",
    "SECRET": "s p a c e",
    "TMUX": "/tmp/other,1,0",
    "CUDA_VISIBLE_DEVICES": "7",
}


@pytest.mark.parametrize(
    ("spec", "gpus", "argv"),
    [
        (JobSpec("/w/t.py", args=("--synch",), python="py"), None, ["py", "/w/t.py", "--synch"]),
        (JobSpec("pkg.train", module=True, python="py"), None, ["py", "-m", "pkg.train"]),
        (
            JobSpec("/w/t.py", args=("a b", "$(x);*"), python="py", gpus=(2, 4)),
            (2, 4),
            [
                "py",
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node=2",
                "/w/t.py",
                "a b",
                "$(x);*",
            ],
        ),
        (
            JobSpec("pkg.train", module=True, python="py", cpu=True, nproc=3),
            None,
            [
                "py",
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node=3",
                "--module",
                "pkg.train",
            ],
        ),
        (JobSpec("/w/t.py", python="py", gpus=(2, 4), nproc=1), (2, 4), ["py", "/w/t.py"]),
    ],
)
def test_argv(spec: JobSpec, gpus: tuple[int, ...] | None, argv: list[str]) -> None:
    ctx = RunContext(CTX.name, CTX.run, CTX.run_id, gpus, CTX.log_path)
    launch = build(spec, ctx, BASE)
    assert launch.argv == argv
    assert launch.rendezvous == (STANDALONE if spec.procs > 1 else None)


@pytest.mark.parametrize(
    ("spec", "worker"),
    [
        (JobSpec("/w/t.py", args=("a b",), python="py", nproc=2), ["py", "-u", "/w/t.py", "a b"]),
        (JobSpec("pkg.train", module=True, python="py", nproc=2), ["py", "-u", "-m", "pkg.train"]),
    ],
)
def test_several_ranks_run_in_the_rank_wrapper(spec: JobSpec, worker: list[str]) -> None:
    ctx = RunContext(CTX.name, CTX.run, CTX.run_id, None, CTX.log_path, rank_python="/hj/python")
    argv = build(spec, ctx, BASE).argv
    head = ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    wrapper = ["/hj/python", "-mhandyjobs.jobside.rank", f"--python={worker[0]}"]
    assert argv == [*head, "--no-python", *wrapper, *worker[1:]]
    # torchrun names a failed job after the first word not starting with "-": the script
    assert next(a for a in argv[argv.index("/hj/python") + 1 :] if a[0] != "-") == spec.script
    # one process never goes through the wrapper: it keeps the runner's terminal (pdb)
    one = build(JobSpec("/w/t.py", python="py"), ctx, BASE).argv
    assert one == ["py", "/w/t.py"]


def test_env_is_the_callers_plus_handyjobs_vars() -> None:
    spec = JobSpec("/w/t.py", env=(("LR", "3e-4"),))
    env = build(spec, CTX, BASE, pane_env={"TMUX": "/tmp/ours,2,0", "TMUX_PANE": "%3"}).env
    assert env["SECRET"] == "s p a c e"
    assert env["LR"] == "3e-4"
    assert (env["HANDYJOBS_JOB"], env["HANDYJOBS_RUN"], env["HANDYJOBS_RUN_ID"]) == (
        "exp1",
        "2",
        "r1",
    )
    assert env["TMUX"] == "/tmp/ours,2,0" and env["TMUX_PANE"] == "%3"  # the pane it runs in
    assert env["CUDA_VISIBLE_DEVICES"] == "7"  # no GPU option: the caller's choice stands
    assert "HANDYJOBS_DEVICE" not in env


def test_gpus_pin_in_nvidia_smi_order() -> None:
    ctx = RunContext("exp1", 1, "r1", (4, 2), "/l")
    env = build(JobSpec("/w/t.py", gpus=(4, 2)), ctx, BASE).env
    assert env["CUDA_VISIBLE_DEVICES"] == "4,2"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_cpu_hides_gpus_and_tells_the_trainer() -> None:
    env = build(JobSpec("/w/t.py", cpu=True, nproc=2), CTX, BASE).env
    assert env["HANDYJOBS_DEVICE"] == "cpu"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
