"""The sbatch script and the per-node step, built from a fake two-node Slurm environment.

Pure functions only: nothing here runs Slurm (tests/test_slurm.py does, on a local one).
"""

from __future__ import annotations

import pytest

from handyjobs.backends.slurm import backend, describe, jobside, node, sbatch, step
from handyjobs.core.records import JobSpec, JobState, Run
from handyjobs.errors import UsageError
from handyjobs.jobside import launch
from handyjobs.structs import replace

# What Slurm puts in the batch script's environment on the first of two nodes.
TWO_NODES = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURMD_NODENAME": "gpu07",
    "SLURM_CPUS_PER_TASK": "4",
    "SLURM_RESTART_COUNT": "1",
    "SLURM_NTASKS": "2",
}


def slurm_spec(**given: object) -> JobSpec:
    """A checked spec of a job submitted with ``--slurm`` and the given Slurm options."""
    req = sbatch.SlurmRequest(**given)  # type: ignore[arg-type]
    return JobSpec(
        script="/home/u/train.py",
        args=("--epochs", "3"),
        python="/usr/bin/python3",
        nproc=4,
        cpu=True,
        slurm=sbatch.check(req),
    )


def test_the_rendezvous_is_on_the_first_node_of_the_allocation() -> None:
    alloc = step.Allocation.from_env(TWO_NODES)
    assert (alloc.job_id, alloc.nnodes, alloc.head, alloc.restarts) == ("4242", 2, "gpu07", 1)
    assert step.first_host("gpu[07-09,12],cpu1") == "gpu07"
    assert step.first_host("node3,node1") == "node3"
    # Without SLURMD_NODENAME the head is read from the node list.
    env = {k: v for k, v in TWO_NODES.items() if k != "SLURMD_NODENAME"}
    assert step.Allocation.from_env(env).head == "gpu07"
    with pytest.raises(ValueError, match="not inside a Slurm allocation"):
        step.Allocation.from_env({})


def test_one_torchrun_per_node_through_srun() -> None:
    spec = slurm_spec(nodes=2)
    alloc = step.Allocation.from_env(TWO_NODES)
    argv = step.step_argv(spec, alloc, 29512)
    assert argv[0] == "srun"
    for opt in ("--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--cpus-per-task=4"):
        assert opt in argv
    at = argv.index("handyjobs.backends.slurm.node")
    assert argv[at + 1 : at + 3] == ["gpu07", "--"]
    torchrun = argv[at + 3 :]
    assert torchrun[:3] == ["/usr/bin/python3", "-m", "torch.distributed.run"]
    for opt in (
        "--nnodes=2",
        "--nproc-per-node=4",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpu07:29512",
        "--rdzv-id=4242",
    ):
        assert opt in torchrun
    assert torchrun[-3:] == ["/home/u/train.py", "--epochs", "3"]
    assert step.rendezvous(spec, alloc, 29512) == "c10d gpu07:29512 id=4242 nnodes=2"


def test_the_head_node_hosts_the_store_and_the_others_do_not() -> None:
    spec = slurm_spec(nodes=2)
    argv = step.step_argv(spec, step.Allocation.from_env(TWO_NODES), 29512)
    args = argv[argv.index("handyjobs.backends.slurm.node") + 1 :]
    on_head = node.node_argv(args, {"SLURMD_NODENAME": "gpu07"})
    on_other = node.node_argv(args, {"SLURMD_NODENAME": "gpu08"})
    assert "--rdzv-conf=is_host=1" in on_head and "--rdzv-conf=is_host=0" not in on_head
    assert "--rdzv-conf=is_host=0" in on_other
    # The option goes to torchrun, before the script and its arguments.
    assert on_other.index("--rdzv-conf=is_host=0") < on_other.index("/home/u/train.py")


def test_the_runner_builds_the_srun_step_from_its_environment() -> None:
    spec = slurm_spec(nodes=2)
    ctx = launch.RunContext("job", 1, "abc123", None, "/tmp/x.log", rdzv_port=29555)
    caller = {"PATH": "/usr/bin", "SLURM_JOB_ID": "1"}
    built = jobside.JobSide().command(spec, ctx, caller, TWO_NODES)
    assert built.argv[0] == "srun"
    assert "--rdzv-endpoint=gpu07:29555" in built.argv
    assert built.rendezvous == "c10d gpu07:29555 id=4242 nnodes=2"
    # The allocation's variables are the step's, never the submitting shell's.
    assert built.env["SLURM_JOB_ID"] == "4242"
    assert built.env["HANDYJOBS_NNODES"] == "2"


def test_the_batch_script_carries_the_options_and_execs_the_runner() -> None:
    spec = slurm_spec(
        nodes=2,
        partition="gpu",
        time="1:00:00",
        account="proj1",
        extra=("--qos=high",),
        requeue=True,
        signal_before_s=90,
    )
    runner = ["python", "-m", "handyjobs.jobside.runner"]
    text = sbatch.script(spec, "train-1", 1, "abc123", runner, "~/j")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in (
        "#SBATCH --job-name=train-1",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=1:00:00",
        "#SBATCH --account=proj1",
        "#SBATCH --export=NONE",
        "#SBATCH --signal=B:USR1@90",
        "#SBATCH --requeue",
        "#SBATCH --qos=high",
    ):
        assert directive in lines, text
    # Extras come last so that they win over handyjobs' own choices.
    assert lines.index("#SBATCH --qos=high") > lines.index("#SBATCH --requeue")
    assert lines[-1] == "exec python -m handyjobs.jobside.runner"
    assert "export HANDYJOBS_RUNNER_OF=abc123" in lines


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"submit": False, "nodes": 2}, "--nodes"),
        ({"time": "soon"}, "--time"),
        ({"mem": "lots"}, "--mem"),
        ({"signal_before_s": 0}, "--signal-before"),
        ({"extra": ("qos=high",)}, "--slurm-arg"),
        ({"extra": ("--comment='a b'",)}, "--slurm-arg"),
        ({"cpus_per_gpu": 8}, "--cpus-per-gpu is for GPU jobs"),
        ({"mem_per_gpu": "32G"}, "--mem-per-gpu is for GPU jobs"),
        ({"gpus_per_node": 2, "cpus_per_gpu": 0}, "--cpus-per-gpu"),
        ({"gpus_per_node": 2, "mem_per_gpu": "lots"}, "--mem-per-gpu"),
        ({"gpus_per_node": 2, "mem_per_gpu": "32G", "mem": "64G"}, "pick one"),
        ({"setup": ("module load a\nmodule load b",)}, "one shell line per --setup"),
        ({"setup": ("  ",)}, "--setup"),
        ({"srun_opts": ("container-image=x",)}, "--srun-opt"),
        ({"srun_opts": ("--container-mounts='/a b'",)}, "--srun-opt"),
        ({"submit": False, "setup": ("module load x",)}, "--setup is for Slurm jobs"),
    ],
)
def test_bad_slurm_options_are_one_usage_error(given: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        sbatch.check(sbatch.SlurmRequest(**given))  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def _run(state: JobState, job_id: str | None = "77", backend: str = "slurm") -> Run:
    handle = {"job_id": job_id} if job_id else {"session": "x"}
    return Run(1, "r1", state, "2026-01-01T00:00:00Z", backend=backend, handle=handle)


def test_after_becomes_a_slurm_dependency_on_the_jobs_still_to_end() -> None:
    after = {
        "prep": _run(JobState.RUNNING, "77"),
        "data": _run(JobState.QUEUED, "78"),
        "done": _run(JobState.SUCCEEDED, "70"),  # nothing left to wait for
    }
    assert sbatch.dependency(after, after_any=False) == "afterok:77:78"
    assert sbatch.dependency(after, after_any=True) == "afterany:77:78"
    assert sbatch.dependency({"done": after["done"]}, after_any=False) is None
    text = sbatch.script(slurm_spec(), "b", 1, "r1", ["python"], "/j", after="afterok:77")
    lines = text.splitlines()
    assert "#SBATCH --dependency=afterok:77" in lines
    # A dependency that fails cancels the job instead of leaving it pending for ever.
    assert "#SBATCH --kill-on-invalid-dep=yes" in lines


@pytest.mark.parametrize(
    ("dep", "after_any", "message"),
    [
        (_run(JobState.RUNNING, None, "tmux"), False, "runs on this machine"),
        (_run(JobState.FAILED), False, "already ended failed"),
    ],
)
def test_after_a_job_slurm_cannot_wait_for_is_one_usage_error(
    dep: Run, after_any: bool, message: str
) -> None:
    with pytest.raises(UsageError, match=message) as info:
        sbatch.dependency({"prep": dep}, after_any)
    assert "\n" not in str(info.value)
    # --after-any starts after a failed job too: nothing to wait for.
    assert sbatch.dependency({"prep": _run(JobState.FAILED)}, after_any=True) is None


def test_max_restarts_reaches_torchrun_even_for_one_process() -> None:
    spec = replace(slurm_spec(), nproc=1, max_restarts=2)
    one_node = {**TWO_NODES, "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "gpu07"}
    argv = step.step_argv(spec, step.Allocation.from_env(one_node), 29512)
    torchrun = argv[argv.index("handyjobs.backends.slurm.node") + 3 :]
    assert torchrun[1:3] == ["-m", "torch.distributed.run"]
    assert "--max-restarts=2" in torchrun


def test_exec_runs_the_command_as_typed_on_each_node_without_python() -> None:
    spec = replace(slurm_spec(), script="./run.sh", args=("hi",), executable=True, nproc=1)
    alloc = step.Allocation.from_env({**TWO_NODES, "SLURM_JOB_NUM_NODES": "1"})
    argv = step.step_argv(spec, alloc, 29512)
    at = argv.index("handyjobs.backends.slurm.node")
    assert argv[at + 3 :] == ["./run.sh", "hi"]
    assert step.rendezvous(spec, alloc, 29512) is None


def test_the_nodes_meet_at_the_heads_address_not_its_name() -> None:
    spec = slurm_spec(nodes=2)
    text = "NodeName=gpu07 Arch=x86_64 NodeAddr=10.1.2.7 NodeHostName=gpu07 Version=22.05"
    addr = step.parse_node_addr(text)
    assert addr == "10.1.2.7"
    assert step.parse_node_addr("NodeName=n1 NodeAddr=(null)") == ""
    alloc = replace(step.Allocation.from_env(TWO_NODES), head_addr=addr)
    assert "--rdzv-endpoint=10.1.2.7:29512" in step.step_argv(spec, alloc, 29512)
    assert step.rendezvous(spec, alloc, 29512) == "c10d 10.1.2.7:29512 id=4242 nnodes=2"
    # The node wrapper still tells the head by its Slurm name.
    assert "gpu07" in step.step_argv(spec, alloc, 29512)
    six = replace(alloc, head_addr="fd00::7")
    assert step.endpoint(six, 29512) == "[fd00::7]:29512"


def test_squeue_words_for_a_suspended_and_a_held_job() -> None:
    jobs = backend.parse_squeue(
        "7|SUSPENDED|None|n1|0|\n8|PENDING|JobHeldUser||0|\n9|PENDING|JobHeldAdmin||0|\n"
        "10|PENDING|Resources||0|\n"
    )
    assert jobs["7"].verdict is JobState.PAUSED and not jobs["7"].held
    assert jobs["8"].held and jobs["9"].held and jobs["8"].verdict is JobState.QUEUED
    assert not jobs["10"].held


@pytest.mark.parametrize(
    ("verb", "said", "line"),
    [
        (
            "suspend",
            "Access/permission denied for job 42\n",
            "Slurm refused to suspend job 42 (Access/permission denied): on most clusters only "
            "Slurm's operators may suspend and resume jobs; ask one to `scontrol suspend 42`, or "
            "end it with `handyjobs stop exp`",
        ),
        (
            "release",
            "Access/permission denied for job 42\nslurm_suspend error: Access/permission denied\n",
            "Slurm refused to release job 42 (Access/permission denied): an administrator's hold "
            "is theirs to change; ask one to `scontrol release 42`, or end the job with "
            "`handyjobs stop exp`",
        ),
        (
            "resume",
            "Job/step already completing or completed for job 42\n",
            "Slurm refused to resume job 42 (Job/step already completing or completed); see its "
            "state with `handyjobs show exp`, then try again",
        ),
    ],
    ids=["suspend-denied", "release-denied", "ended"],
)
def test_a_control_slurm_refuses_is_one_line_saying_what_to_do(
    verb: str, said: str, line: str
) -> None:
    assert describe.refusal(verb, "42", "exp", said) == line


def gpu_spec(**given: object) -> JobSpec:
    """A checked spec of a GPU job submitted with ``--slurm`` and the given Slurm options."""
    return replace(slurm_spec(**given), cpu=False, nproc=None)


GPU_SCRIPT = """\
#!/bin/bash
# handyjobs job fit, run 1 (run id abc123), submitted with sbatch.
# The runner starts one torchrun per node through srun, copies every byte of output
# to output.log and records the outcome in this folder, which every node must share.
#SBATCH --job-name=fit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --mem-per-gpu=40G
#SBATCH --partition=gpu
#SBATCH --output=/s/jobs/fit/slurm-%j.out
#SBATCH --open-mode=append
#SBATCH --export=NONE
#SBATCH --signal=B:USR1@60
export HANDYJOBS_RUNNER_OF=abc123
export HANDYJOBS_SCHEDULED=slurm
exec python -m handyjobs.jobside.runner
"""


def test_a_gpu_job_gets_cpus_and_memory_per_gpu() -> None:
    spec = gpu_spec(nodes=2, gpus_per_node=4, partition="gpu", cpus_per_gpu=8, mem_per_gpu="40G")
    runner = ["python", "-m", "handyjobs.jobside.runner"]
    assert sbatch.script(spec, "fit", 1, "abc123", runner, "/s/jobs/fit") == GPU_SCRIPT
    # Asked for, it wins over the nodes' share.
    assert sbatch.script(spec, "fit", 1, "abc123", runner, "/s/jobs/fit", share=2) == GPU_SCRIPT


def test_a_gpu_job_that_does_not_say_gets_the_nodes_share() -> None:
    spec = gpu_spec(gpus_per_node=2)
    assert "--cpus-per-task=12" in sbatch.options(spec, "/j", share=6)
    # Nothing known of the nodes: Slurm's own default.
    assert not any(o.startswith("--cpus-per-task") for o in sbatch.options(spec, "/j"))


@pytest.mark.parametrize(
    ("sinfo", "partition", "share"),
    [
        ("2 gpu:2 debug*\n", None, 1),
        ("64 gpu:a100:8(S:0-1) gpu\n32 (null) cpu*\n", "gpu", 8),
        ("64 gpu:a100:8(S:0-1) gpu\n32 (null) cpu*\n", None, None),  # default has no GPUs
        ("64 gpu:8 gpu*\n48 gpu:4 gpu*\n", None, 8),  # two kinds of node: the smaller share
        ("96 gpu:h100:4,gpu:a100:4 mixed\n", "mixed", 12),
        ("", "gpu", None),
    ],
)
def test_the_cpu_share_is_read_from_sinfo(sinfo: str, partition: str | None, share: int) -> None:
    assert sbatch.cpu_share(sinfo, partition) == share


def test_setup_lines_run_before_the_runner_in_the_order_given() -> None:
    spec = slurm_spec(setup=("module load cuda/12.4", "export FOO='a b'"))
    text = sbatch.script(spec, "fit", 1, "abc123", ["python", "-m", "runner"], "/s/jobs/fit")
    tail = text.splitlines()[-8:]
    assert tail == [
        "env -0 > /s/jobs/fit/setup-env-abc123",
        "# --setup",
        "module load cuda/12.4",
        "export FOO='a b'",
        "export HANDYJOBS_SETUP_BEFORE=/s/jobs/fit/setup-env-abc123",
        "export HANDYJOBS_RUNNER_OF=abc123",
        "export HANDYJOBS_SCHEDULED=slurm",
        "exec python -m runner",
    ], text
    # Without --setup the script saves nothing.
    assert "env -0" not in sbatch.script(slurm_spec(), "fit", 1, "abc123", ["r"], "/s/jobs/fit")


def test_srun_options_come_after_handyjobs_own() -> None:
    spec = slurm_spec(nodes=2, srun_opts=("--container-image=nvcr.io#pytorch", "--mpi=none"))
    argv = step.step_argv(spec, step.Allocation.from_env(TWO_NODES), 29512)
    at = argv.index("--container-image=nvcr.io#pytorch")
    assert argv[at + 1] == "--mpi=none"
    assert at > argv.index("--cpus-per-task=4") and argv.index("--mpi=none") < argv.index(
        "handyjobs.backends.slurm.node"
    )


@pytest.mark.parametrize(
    ("before", "after", "job", "carried"),
    [
        ({}, {"FOO": "bar"}, {}, {"FOO": "bar"}),
        ({"FOO": "x"}, {"FOO": "bar"}, {"FOO": "mine"}, {"FOO": "bar"}),
        # module load puts its folder in front: the job keeps its own PATH behind it.
        ({"PATH": "/usr/bin"}, {"PATH": "/opt/cuda/bin:/usr/bin"}, {"PATH": "/venv/bin:/usr/bin"},
         {"PATH": "/opt/cuda/bin:/venv/bin:/usr/bin"}),
        ({"LD": "/a"}, {"LD": "/a:/b"}, {"LD": "/j"}, {"LD": "/j:/b"}),
        ({"PATH": "/usr/bin"}, {"PATH": "/opt/bin"}, {"PATH": "/venv/bin"}, {"PATH": "/opt/bin"}),
        # Unchanged, the shell's own, or Slurm's and handyjobs': none of the setup's doing.
        ({"A": "1", "SHLVL": "1"}, {"A": "1", "SHLVL": "2", "_": "/bin/env"}, {}, {}),
        ({}, {"SLURM_X": "1", "HANDYJOBS_SETUP_BEFORE": "/f"}, {}, {}),
    ],
)  # fmt: skip
def test_what_setup_lines_change_reaches_the_job(
    before: dict[str, str], after: dict[str, str], job: dict[str, str], carried: dict[str, str]
) -> None:
    assert step.setup_changes(before, after, job) == carried
