"""ParallelTrainer under real torchrun: 2 gloo processes on CPU, several nodes, failures, stops."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from handyjobs.trainer import ParallelTrainer
from handyjobs.views import curves

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "trainer_scripts" / "worker.py"
EXAMPLES = REPO / "examples"


@dataclass
class Finished:
    """A finished launch: exit code, output and how long it took."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def explain(self) -> str:
        """Everything a failing assertion should show: the command and the workers' output."""
        return (
            f"command: {' '.join(self.argv)}\nexit code: {self.returncode}\n"
            f"--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )


def child_env(**extra: str) -> dict[str, str]:
    """The environment for launched scripts: one thread each, no inherited launcher state."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "HANDYJOBS_DEVICE"}
        and not k.startswith(("MASTER_", "TORCHELASTIC_", "GROUP_"))
    }
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def torchrun_argv(*args: str, nproc: int = 2) -> list[str]:
    """torchrun on a port the OS picks (--standalone), so parallel test runs never collide."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        *args,
    ]


def start(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start a launch in its own session so a stuck one can be stopped as a group."""
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], argv: list[str], timeout: float) -> Finished:
    """Wait for a launch with a deadline; on overrun stop it (torchrun forwards SIGTERM)."""
    began = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        result = Finished(argv, proc.returncode, out, err, time.monotonic() - began)
        pytest.fail(f"launch overran {timeout}s\n{result.explain()}")
    return Finished(argv, proc.returncode, out, err, time.monotonic() - began)


def run(argv: list[str], cwd: Path, timeout: float = 120, **extra: str) -> Finished:
    """Run a launch to the end."""
    began = time.monotonic()
    result = finish(start(argv, cwd, child_env(**extra)), argv, timeout)
    result.seconds = time.monotonic() - began
    return result


def results(out: Path, mode: str, world: int) -> list[dict[str, Any]]:
    """The per-rank JSON results a worker mode wrote, in rank order."""
    return [json.loads((out / f"{mode}_rank{r}.json").read_text()) for r in range(world)]


def free_port() -> int:
    """A port that was free a moment ago, for the several-node rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ReaderStats:
    """What the checkpoint reader saw while the workers kept saving."""

    good: int = 0
    bad: list[str] = field(default_factory=list)


def poll_checkpoint(path: Path, done: Path, proc: subprocess.Popen[str]) -> ReaderStats:
    """Read ``path`` as often as possible until the writer is done; every read must load."""
    stats = ReaderStats()
    deadline = time.monotonic() + 120
    while not done.exists() and proc.poll() is None and time.monotonic() < deadline:
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            continue
        try:
            torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
            stats.good += 1
        except Exception as exc:
            stats.bad.append(f"{len(blob)} bytes: {exc}")
    return stats


@dataclass
class MainRun:
    """The batched main launch, its one-process reference, and the reader's findings."""

    out: Path
    ddp: Finished
    single: Finished
    ranks: list[dict[str, Any]]
    reader: ReaderStats


@pytest.fixture(scope="module")
def main_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MainRun]:
    """One torchrun with most checks (each start costs seconds), plus the 1-process run."""
    out = tmp_path_factory.mktemp("trainer_main")
    argv = torchrun_argv(str(WORKER), "main", str(out))
    proc = start(argv, out, child_env())
    reader: list[ReaderStats] = []
    thread = threading.Thread(
        target=lambda: reader.append(poll_checkpoint(out / "atomic.pt", out / "atomic.done", proc))
    )
    thread.start()
    ddp = finish(proc, argv, timeout=180)
    thread.join(timeout=60)
    assert ddp.returncode == 0, ddp.explain()
    single = run([sys.executable, str(WORKER), "single", str(out)], out)
    assert single.returncode == 0, single.explain()
    yield MainRun(out, ddp, single, results(out, "main", 2), reader[0])


def test_ranks_and_backend_come_from_torchrun(main_run: MainRun) -> None:
    """RANK / WORLD_SIZE / LOCAL_RANK from torchrun; gloo on CPU; closed at the end."""
    for rank, result in enumerate(main_run.ranks):
        assert result["rank"] == rank
        assert result["local_rank"] == rank
        assert result["world_size"] == 2
        assert result["backend"] == "gloo"
        assert result["device"] == "cpu"
        assert result["synch"] is True
        assert result["group_alive_after_second_close"] is True  # it did not own the group
        assert result["group_alive_after_close"] is False


def test_n_gpus_mismatch_warns_naming_both(main_run: MainRun) -> None:
    """config.n_gpus=3 with 2 processes: a warning that names both numbers, once per node."""
    lines = [line for line in main_run.ddp.stderr.splitlines() if "config.n_gpus is 3" in line]
    assert len(lines) == 1, main_run.ddp.explain()
    assert "LOCAL_WORLD_SIZE=2" in lines[0]


def test_ddp_matches_one_process_with_double_batch(main_run: MainRun) -> None:
    """2 ranks x batch b end with the weights of 1 process x batch 2b."""
    ddp = torch.load(main_run.out / "equiv_ddp.pt", weights_only=True)["model"]
    single = torch.load(main_run.out / "equiv_single.pt", weights_only=True)["model"]
    assert ddp.keys() == single.keys()
    diff = max(float((ddp[k] - single[k]).abs().max()) for k in ddp)
    assert diff <= 1e-5


def test_accumulate_matches_bigger_batch_and_skips_sync(main_run: MainRun) -> None:
    """accumulate(model, 2) equals batch 2b; non-final micro-steps leave gradients local."""
    for result in main_run.ranks:
        acc = result["accumulate"]
        assert acc["max_abs_diff"] <= 1e-5
        assert acc["micro_steps_unsynced"] and all(acc["micro_steps_unsynced"])
        assert acc["final_steps_synced"] and all(acc["final_steps_synced"])


def test_shards_are_disjoint_cover_and_reshuffle(main_run: MainRun) -> None:
    """Every epoch: disjoint shards that cover the data; a new order each epoch, no set_epoch."""
    epochs = main_run.ranks[0]["sampling"]
    for shards in epochs:
        first, second = shards
        assert not set(first) & set(second)
        assert sorted(first + second) == list(range(40))
    orders = [shards[0] for shards in epochs]
    assert orders[0] != orders[1] != orders[2]
    assert main_run.ranks[1]["sampling"] == epochs


def test_collectives(main_run: MainRun) -> None:
    """all_reduce (numbers stay numbers), gather (uneven tensors, objects), broadcast."""
    for result in main_run.ranks:
        c = result["collectives"]
        assert c["reduced"] == {"mean": 1.5, "sum": 3, "max": 2, "min": 1}
        assert c["reduced_types"] == {"mean": "float", "sum": "int", "max": "int", "min": "int"}
        assert c["tensor_mean"] == [0.5, 5.0]
        assert c["uneven"] == [0, 1, 0, 1, 2]
        assert c["objects"] == [{"rank": 0}, {"rank": 1}]
        assert c["broadcast"] == {"from": 0}
        assert c["broadcast_tensor"] == [5.0, 5.0]


def test_seed_api(main_run: MainRun) -> None:
    """Seed calls: loader without sampler, dict untouched, global-rank-0-only side effects."""
    first, second = main_run.ranks
    for result in main_run.ranks:
        seed = result["seed_api"]
        assert seed["ckpt_after"] == {"epoch": 3}
        assert seed["get_model_is_plain"] == "Sequential"
        assert seed["wrapped"] == "DistributedDataParallel"
        epoch0, epoch1 = seed["orders"]
        assert not set(epoch0[0]) & set(epoch0[1])
        assert epoch0 != epoch1
    assert first["seed_api"]["called"] == 5
    assert second["seed_api"]["called"] is None
    assert (main_run.out / "seed_log.txt").read_text() == "line from rank 0\n"
    saved = torch.load(main_run.out / "seed_ckpt.pt", weights_only=True)
    assert saved["epoch"] == 3
    assert not any(k.startswith("module.") for k in saved["state_dict"])


def test_seeding_same_init_different_augmentation(main_run: MainRun) -> None:
    """seed_everything: one model init everywhere; python RNG and worker seeds per rank."""
    for result in main_run.ranks:
        seeding = result["seeding"]
        assert seeding["same_init"] is True
        assert seeding["python_differs"] is True
        first, second = seeding["worker_seeds"]
        assert not set(first) & set(second)


def test_print_and_progress_only_on_rank_zero(main_run: MainRun) -> None:
    """print and progress write on global rank 0 (plain lines off a TTY), nothing elsewhere."""
    text = main_run.ranks[0]["output"]
    assert "hello from print" in text
    assert "steps: 8/8 (100%)" in text
    assert main_run.ranks[1]["output"] == ""


def test_reader_never_sees_a_partial_checkpoint(main_run: MainRun) -> None:
    """A reader polling the path while rank 0 saves 25 times: every read loads."""
    assert main_run.ranks[0]["atomic_saves"] == 25
    assert main_run.reader.bad == []
    assert main_run.reader.good > 0
    leftovers = [p.name for p in main_run.out.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_checkpoint_loads_in_a_plain_process(main_run: MainRun) -> None:
    """The DDP run's checkpoint loads into a bare module: no ``module.`` prefixes."""
    state = torch.load(main_run.out / "equiv_ddp.pt", map_location="cpu", weights_only=True)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(0.0), nn.Linear(16, 1))
    model.load_state_dict(state["model"])  # strict: every key must match
    resume = torch.load(main_run.out / "resume.pt", map_location="cpu", weights_only=True)
    assert resume["epoch"] == 1
    assert {"model", "optimizer", "scheduler", "handyjobs"} <= resume.keys()
    assert len(resume["handyjobs"]["ranks"]) == 2


def test_resume_continues_exactly(main_run: MainRun) -> None:
    """A new launch resumed from the checkpoint repeats the uninterrupted run's next epoch."""
    resumed = run(torchrun_argv(str(WORKER), "resume", str(main_run.out)), main_run.out)
    assert resumed.returncode == 0, resumed.explain()
    for rank, (before, after) in enumerate(
        zip(main_run.ranks, results(main_run.out, "resume", 2), strict=True)
    ):
        assert after["epoch"] == 1
        assert after["losses"] == before["resume_next_losses"]
        assert after["final"] == before["resume_final"]
        # Never closed by hand: the exit hook destroyed the process group.
        probe = main_run.out / f"resume_group_at_exit_rank{rank}"
        assert probe.read_text() == "False", resumed.explain()


def test_main_process_first_orders_the_block(main_run: MainRun) -> None:
    """Rank 1 enters the block only after rank 0 (which sleeps first) has left it."""
    assert [result["first"] for result in main_run.ranks] == [True, True]


def test_should_stop_agrees_across_ranks(main_run: MainRun) -> None:
    """A stop asked for on rank 1 alone: should_stop is True on both at the same read."""
    first, second = (result["stop_agreement"] for result in main_run.ranks)
    assert first == {"before": False, "local": False, "agreed": True}
    assert second == {"before": False, "local": True, "agreed": True}


def test_progress_and_metrics_from_rank_zero_only(main_run: MainRun) -> None:
    """Each rank points the reports at its own file: only rank 0's files exist."""
    assert main_run.ranks[0]["reports"] == {"progress": True, "metrics": True}
    assert main_run.ranks[1]["reports"] == {"progress": False, "metrics": False}
    logged = curves.read(main_run.out / "metrics_rank0.jsonl")
    assert logged == {"loss": [(7, 0.25)], "rank": [(7, 0.0)]}
    report = json.loads((main_run.out / "progress_rank0.json").read_text())
    assert (report["done"], report["total"], report["rank"]) == (3, 3, 0)


def test_bytes_broadcast_in_chunks(main_run: MainRun) -> None:
    """Rank 0's bytes arrive whole in small chunks, over the default group and a gloo side one."""
    blob = bytes(range(256)) * 41 + b"tail"  # worker.BLOB
    digest = hashlib.sha256(blob).hexdigest()
    for result in main_run.ranks:
        assert result["chunks"] == {"default": digest, "side": digest, "cpu_group_is_default": True}


def test_several_nodes_rank_zero_alone_writes(tmp_path: Path) -> None:
    """Two torchruns rendezvous as 2 nodes (2 + 1 processes): unique ranks; rank 0 writes."""
    port = free_port()
    out = tmp_path / "out"
    out.mkdir()
    launches = []
    for node, nproc in ((0, 2), (1, 1)):
        node_dir = tmp_path / f"node{node}"
        node_dir.mkdir()
        argv = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--nproc_per_node",
            str(nproc),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            f"handyjobs-test-{port}",
            str(WORKER),
            "multinode",
            str(out),
        ]
        launches.append((argv, start(argv, tmp_path, child_env(NODE_OUT=str(node_dir)))))
    finished = [finish(proc, argv, timeout=120) for argv, proc in launches]
    for result in finished:
        assert result.returncode == 0, result.explain()

    ranks = results(out, "multinode", 3)
    assert [r["rank"] for r in ranks] == [0, 1, 2]
    assert {r["world_size"] for r in ranks} == {3}
    assert sorted((r["node_dir"], r["local_rank"], r["local_world_size"]) for r in ranks) == sorted(
        [
            (str(tmp_path / "node0"), 0, 2),
            (str(tmp_path / "node0"), 1, 2),
            (str(tmp_path / "node1"), 0, 1),
        ]
    )
    assert all(r["loaded_step"] == 5 for r in ranks)
    assert all(r["group_alive_after_with"] is False for r in ranks)

    main_dir = Path(ranks[0]["node_dir"])
    other_dir = ({tmp_path / "node0", tmp_path / "node1"} - {main_dir}).pop()
    assert (main_dir / "ckpt.pt").exists()
    assert (main_dir / "seed_ckpt.pt").exists()
    assert (main_dir / "log.txt").read_text() == "rank 0\n"
    assert (main_dir / "seed_log.txt").read_text() == "rank 0\n"
    assert (main_dir / "called.txt").exists()
    # The other node's local rank 0 (the seed's gate) must not have written anything.
    assert sorted(p.name for p in other_dir.iterdir()) == ["seed_log.txt"]
    assert (other_dir / "seed_log.txt").read_text() == ""


def test_a_failing_rank_ends_the_job_quickly(tmp_path: Path) -> None:
    """Rank 1 raises while rank 0 waits in a barrier: torchrun exits non-zero within 60 s."""
    result = run(torchrun_argv(str(WORKER), "fail", str(tmp_path)), tmp_path, timeout=90)
    assert result.returncode != 0, result.explain()
    assert result.seconds < 60, result.explain()
    assert "rank 1 fails on purpose" in result.stderr
    assert (tmp_path / "fail_started_rank0").exists()


def test_train_example_checkpoints_and_resumes(tmp_path: Path) -> None:
    """examples/train.py on 2 processes: a checkpoint each epoch; a second run resumes."""
    ckpt = tmp_path / "last.pt"
    script = str(EXAMPLES / "train.py")
    # HANDYJOBS_DEVICE=cpu: two processes must not ask a one-GPU machine for cuda:1.
    first = run(
        torchrun_argv(script, "--epochs", "1", "--ckpt", str(ckpt)),
        tmp_path,
        HANDYJOBS_DEVICE="cpu",
    )
    assert first.returncode == 0, first.explain()
    assert "done: epoch 1" in first.stdout
    assert ckpt.exists()
    second = run(
        torchrun_argv(script, "--epochs", "2", "--ckpt", str(ckpt)),
        tmp_path,
        HANDYJOBS_DEVICE="cpu",
    )
    assert second.returncode == 0, second.explain()
    assert "resumed from" in second.stdout and "after epoch 1" in second.stdout
    assert "epoch 1:" not in second.stdout
    assert "done: epoch 2" in second.stdout
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``: torchrun's workers and their DataLoader workers."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_ready(out: Path, proc: subprocess.Popen[str], argv: list[str]) -> list[int]:
    """The pids of both ranks, once each has read should_stop (so a signal is a request)."""
    deadline = time.monotonic() + 90
    paths = [out / f"stop_ready_rank{rank}" for rank in range(2)]
    while not all(p.exists() for p in paths):
        if proc.poll() is not None or time.monotonic() > deadline:
            finish(proc, argv, timeout=1)
            pytest.fail(f"the stop workers never got ready in {out}")
        time.sleep(0.05)
    return [int(p.read_text()) for p in paths]


@dataclass
class Stopped:
    """A stop launch after its signals: what it printed, whom it signalled, what ranks wrote."""

    run: Finished
    signalled: list[int]
    ranks: list[dict[str, Any]]
    saved_step: int


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stopped]:
    """Two 2-rank stop launches side by side (their start-up dominates; overlapping it halves
    the wait): SIGTERM to rank 1 alone, and SIGTERM to every process of the job as
    ``handyjobs stop`` sends it (torchrun's agent, both ranks, their DataLoader workers)."""
    launches = {}
    for name, knobs in (("one_rank", {}), ("every_process", {"HJ_STOP_LOADER_WORKERS": "1"})):
        out = tmp_path_factory.mktemp(f"stop_{name}")
        argv = torchrun_argv(str(WORKER), "stop", str(out))
        launches[name] = (out, argv, start(argv, out, child_env(**knobs)))
    signalled: dict[str, list[int]] = {}
    for name, (out, argv, proc) in launches.items():
        pids = wait_ready(out, proc, argv)
        if name == "one_rank":
            signalled[name] = [pids[1]]
        else:
            signalled[name] = [proc.pid, *descendants(proc.pid)]
        for pid in signalled[name]:
            os.kill(pid, signal.SIGTERM)
    found = {}
    for name, (out, argv, proc) in launches.items():
        result = finish(proc, argv, timeout=90)
        missing = [r for r in range(2) if not (out / f"stop_rank{r}.json").exists()]
        assert not missing, f"ranks {missing} wrote no result\n{result.explain()}"
        saved = torch.load(out / "stop.pt", map_location="cpu", weights_only=True)
        found[name] = Stopped(result, signalled[name], results(out, "stop", 2), saved["step"])
    return found


def test_sigterm_to_one_rank_stops_both_at_the_same_step(stopped: dict[str, Stopped]) -> None:
    """Rank 1 alone gets SIGTERM: both ranks leave the loop at one step, save, and exit 0."""
    done = stopped["one_rank"]
    assert done.run.returncode == 0, done.run.explain()
    first, second = done.ranks
    assert first["step"] == second["step"] == done.saved_step > 0
    assert (first["signal"], second["signal"]) == (None, "SIGTERM")
    assert "handyjobs: rank 1 got SIGTERM" in done.run.stderr


def test_handyjobs_stop_signals_every_process_and_the_job_saves(
    stopped: dict[str, Stopped],
) -> None:
    """SIGTERM to the agent, both ranks and their loader workers at once (plus the copy the
    agent forwards to each rank): both ranks save at one step and exit 0, no loader dies."""
    done = stopped["every_process"]
    assert len(done.signalled) >= 5, done.run.explain()  # agent, 2 ranks, 2 loader workers
    first, second = done.ranks
    assert first["step"] == second["step"] == done.saved_step > 0
    assert first["signal"] == second["signal"] == "SIGTERM"
    assert "exited unexpectedly" not in done.run.stderr, done.run.explain()
    # The agent itself ends by its own SIGTERM, but it reports no worker as failed.
    assert "ChildFailedError" not in done.run.stderr, done.run.explain()


def gpu_processes(count: int) -> int:
    """Processes for the NCCL test: 2 when there are 2 GPUs, else 1 (NCCL refuses two ranks on
    one GPU); with synch=True even one process makes an nccl group."""
    return 2 if count >= 2 else 1


def test_gpu_process_count() -> None:
    """One GPU: one NCCL process; two or more: two."""
    assert [gpu_processes(n) for n in (1, 2, 8)] == [1, 2, 2]


@pytest.mark.gpu
def test_gpu_nccl_ddp(tmp_path: Path) -> None:
    """On 1 or more GPUs: nccl on cuda:LOCAL_RANK (current), fp16 and bf16, a GPU checkpoint
    loaded back on the GPU and on the CPU, bytes and stop flags over the gloo side group."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    nproc = gpu_processes(torch.cuda.device_count())
    result = run(torchrun_argv(str(WORKER), "gpu", str(tmp_path), nproc=nproc), tmp_path)
    assert result.returncode == 0, result.explain()
    for rank, r in enumerate(results(tmp_path, "gpu", nproc)):
        assert r["device"] == f"cuda:{rank}"
        assert r["current"] == rank
        assert r["backend"] == "nccl"
        assert r["summed"] == [float(nproc)] * 2
        assert r["fp16_dtype"] == "torch.float16"
        assert r["scaler"] is True and r["scale_finite"] is True
        assert r["stepped"] is True  # the fp16 step moved the weights, all finite
        assert r["reloaded_equal"] is True
        assert r["momentum_devices"] == [f"cuda:{rank}"]
        assert r["bytes_equal"] is True
        assert r["cpu_group_is_default"] is False  # nccl: a gloo side group carries CPU data
        assert r["should_stop"] is True
        assert r["packed"] == [f"cuda:{rank}", "cpu"]
        assert r["packed_rnn_ran"] is True
        assert r["bf16_dtype"] == "torch.bfloat16"
    # The GPU checkpoint also loads in a CPU process (every tensor mapped to the CPU).
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(0.0), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with ParallelTrainer(config={"device": "cpu"}) as cpu:
        cpu.load(tmp_path / "gpu.pt", model=model, optimizer=optimizer)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(s["momentum_buffer"].device.type == "cpu" for s in optimizer.state.values())
