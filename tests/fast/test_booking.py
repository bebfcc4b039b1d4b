"""Tests of handyjobs.core.booking over hand-built records and GPU lists: policy, blockers."""

from __future__ import annotations

import pytest

from handyjobs.core import booking
from handyjobs.core.records import (
    Blocker,
    BlockKind,
    GpuPolicy,
    GpuUser,
    JobRecord,
    JobSpec,
    JobState,
    Run,
)
from handyjobs.errors import GpuBusy, UsageError
from handyjobs.gpus.discovery import Discovery, GpuInfo, GpuProcess
from handyjobs.views import render


def _gpu(
    index: int,
    used: int = 4,
    procs: tuple[GpuProcess, ...] = (),
    mig: bool = False,
    error: str | None = None,
) -> GpuInfo:
    return GpuInfo(
        index=index,
        uuid=f"GPU-fake-{index}",
        name="NVIDIA A100-SXM4-80GB",
        memory_used_mib=used,
        memory_total_mib=81920,
        utilization_pct=0,
        processes=procs,
        mig=mig,
        error=error,
    )


def _box(*gpu_list: GpuInfo) -> Discovery:
    return Discovery("fake", tuple(gpu_list))


EIGHT = _box(*(_gpu(i) for i in range(8)))
FOUR = _box(*(_gpu(i) for i in range(4)))
ALICE = GpuProcess(4242, 5000, "alice", "python")
BOB = GpuProcess(777, None, "bob", None)
ANY = GpuPolicy()


def _job(
    name: str,
    state: JobState,
    *,
    gpus: tuple[int, ...] | None = None,
    ngpus: int | None = None,
    held: tuple[int, ...] = (),
    at: str = "2026-11-25T00:00:00.000Z",
    wait: bool = True,
    force: bool = False,
    policy: GpuPolicy = ANY,
    group: str | None = None,
    after: tuple[str, ...] = (),
    after_any: bool = False,
    priority: int = 0,
) -> JobRecord:
    spec = JobSpec(
        script="/p/train.py",
        gpus=gpus,
        ngpus=ngpus,
        wait=wait,
        force=force,
        policy=policy,
        group=group,
        after=after,
        after_any=after_any,
        priority=priority,
    )
    run = Run(run=1, run_id=f"id-{name}", state=state, created_at=at, gpus=held)
    return JobRecord(name=name, spec=spec, log_path="/l", created_at=at, runs=[run])


def _t(second: int) -> str:
    return f"2026-11-25T00:00:{second:02d}.000Z"


# ---- policy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("  ", None), ("0,1,3", frozenset({0, 1, 3})), ("5", {5})],
)
def test_allowed_indices(value: str | None, expected: frozenset[int] | None) -> None:
    env = {} if value is None else {booking.ALLOWED_ENV: value}
    assert booking.allowed_indices(env) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0,x", "HANDYJOBS_GPUS '0,x': 'x' is not a GPU index or UUID"),
        ("GPU-abc", "HANDYJOBS_GPUS='GPU-abc': list GPU indices, not UUIDs"),
        ("1,1", "names GPU 1 twice"),
    ],
)
def test_allowed_indices_bad(value: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        booking.allowed_indices({booking.ALLOWED_ENV: value})
    assert message in str(err.value)


def test_memory_threshold() -> None:
    assert booking.memory_threshold_mib({}) == 1024
    assert booking.memory_threshold_mib({booking.THRESHOLD_ENV: " 500 "}) == 500
    assert booking.memory_threshold_mib({booking.THRESHOLD_ENV: "0"}) == 0
    for bad in ("-1", "1.5", "lots"):
        with pytest.raises(UsageError, match="HANDYJOBS_GPU_MEM_THRESHOLD_MIB="):
            booking.memory_threshold_mib({booking.THRESHOLD_ENV: bad})


def test_policy_from_env_and_check_allowed() -> None:
    policy = booking.policy_from_env({booking.ALLOWED_ENV: "3,0", booking.THRESHOLD_ENV: "10"})
    assert policy == GpuPolicy((0, 3), 10)
    booking.check_allowed([0, 3], policy)
    with pytest.raises(UsageError, match="GPU 1 is outside HANDYJOBS_GPUS=0,3"):
        booking.check_allowed([0, 1], policy)


# ---- one GPU ------------------------------------------------------------------------------


def test_blocker_as_data_and_words() -> None:
    assert booking.blocker(_gpu(0), 1024) is None
    assert booking.blocker(_gpu(0, used=1024), 1024) is None  # at the threshold: still free
    memory = booking.blocker(_gpu(0, used=8123), 1024)
    assert memory == Blocker(0, BlockKind.MEMORY, used_mib=8123, threshold_mib=1024)
    assert render.busy_text(memory) == "8123 MiB of memory in use (threshold 1024 MiB)"
    procs = booking.blocker(_gpu(0, used=5000, procs=(ALICE, BOB)), 1024)
    assert procs is not None and procs.processes == (
        GpuUser(4242, "alice", "python"),
        GpuUser(777, "bob", None),
    )
    assert render.busy_text(procs) == "2 processes (pid 4242 python by alice, pid 777 by bob)"
    lone = booking.blocker(_gpu(0, procs=(GpuProcess(9, None),)), 1024)
    assert lone is not None and render.busy_text(lone) == "1 process (pid 9)"


def test_blocker_ignores_pids_and_their_memory() -> None:
    gpu = _gpu(0, used=5010, procs=(ALICE, BOB))
    only_bob = booking.blocker(gpu, 1024, ignore_pids={4242})
    assert only_bob is not None and render.busy_text(only_bob) == "1 process (pid 777 by bob)"
    # with every process ignored, only the rest of the memory counts
    assert booking.blocker(gpu, 1024, ignore_pids=[4242, 777]) is None
    rest = booking.blocker(_gpu(0, used=9000, procs=(ALICE,)), 1024, ignore_pids=[4242])
    assert rest is not None and rest.used_mib == 4000


def test_mig_and_unreadable_gpus_are_never_free() -> None:
    box = _box(_gpu(0, mig=True), _gpu(1, error="NVML NoPermission"), _gpu(2))
    assert booking.free_gpus(box, {}, ANY) == [2]
    mig = booking.blocker(box.gpus[0], 1024)
    assert mig is not None and mig.kind is BlockKind.MIG
    bad = booking.blocker(box.gpus[1], 1024)
    assert bad is not None and "NVML NoPermission" in render.busy_text(bad)


def test_free_gpus_lowest_first_and_deterministic() -> None:
    assert booking.free_gpus(EIGHT, {}, ANY) == list(range(8))
    shuffled = _box(*(_gpu(i) for i in (5, 2, 7, 0)))
    assert booking.free_gpus(shuffled, {}, ANY) == [0, 2, 5, 7]
    assert booking.free_gpus(Discovery("none", ()), {}, ANY) == []


def test_free_gpus_skips_held_busy_and_disallowed() -> None:
    box = _box(
        _gpu(0),  # held by a handyjobs job
        _gpu(1, used=6000, procs=(ALICE,)),  # busy by process
        _gpu(2, used=8123),  # busy by memory only
        _gpu(3),
        _gpu(4),  # not allowed
        _gpu(5),
        _gpu(6, used=1000),  # under the threshold: free
    )
    allowed = GpuPolicy((0, 1, 2, 3, 5, 6), 1024)
    held = {0: "exp1"}
    assert booking.free_gpus(box, held, allowed) == [3, 5, 6]
    assert booking.free_gpus(box, held, GpuPolicy((), 1024)) == []
    # a higher threshold frees GPU 2
    assert booking.free_gpus(box, held, GpuPolicy(allowed.allowed, 9000)) == [2, 3, 5, 6]


# ---- the queue ----------------------------------------------------------------------------


def test_plan_starts_queued_jobs_in_order_and_never_overbooks() -> None:
    records = [
        _job("running", JobState.RUNNING, gpus=(0,), held=(0,), at=_t(0)),
        _job("first", JobState.QUEUED, ngpus=2, at=_t(1)),
        _job("second", JobState.QUEUED, ngpus=1, at=_t(2)),
        _job("third", JobState.QUEUED, ngpus=1, at=_t(3)),
    ]
    result = booking.plan(records, FOUR)
    starts, waits = result.starts, result.waits
    assert starts == {"first": (1, 2), "second": (3,)}
    assert set(waits) == {"third"}
    third = waits["third"]
    assert (third.needed, third.free, third.position) == (1, 0, 1)
    assert {b.gpu: (b.kind, b.job) for b in third.blockers} == {
        0: (BlockKind.HELD, "running"),
        1: (BlockKind.HELD, "first"),
        2: (BlockKind.HELD, "first"),
        3: (BlockKind.HELD, "second"),
    }
    every = [g for gpus in starts.values() for g in gpus] + [0]
    assert len(every) == len(set(every))


def test_plan_keeps_what_an_earlier_job_waits_for() -> None:
    # "early" needs GPUs 0 and 1; GPU 0 is busy, so it waits, but keeps GPU 1 from "late".
    box = _box(_gpu(0, procs=(ALICE,)), _gpu(1), _gpu(2))
    records = [
        _job("early", JobState.QUEUED, gpus=(0, 1), at=_t(1)),
        _job("late", JobState.QUEUED, gpus=(1,), at=_t(2)),
        _job("other", JobState.QUEUED, ngpus=1, at=_t(3)),
    ]
    result = booking.plan(records, box)
    starts, waits = result.starts, result.waits
    assert starts == {"other": (2,)}
    late = waits["late"]
    assert late.blockers == (Blocker(1, BlockKind.WANTED, job="early"),)
    assert render.wait_text(late) == "GPU 1 is wanted by queued job early"
    early = waits["early"]
    assert [b.kind for b in early.blockers] == [BlockKind.PROCESSES]
    assert render.wait_text(early) == "GPU 0 is busy: 1 process (pid 4242 python by alice)"


def test_plan_judges_each_job_by_its_own_policy() -> None:
    records = [
        _job("fenced", JobState.QUEUED, ngpus=1, at=_t(1), policy=GpuPolicy((3,), 1024)),
        _job("open", JobState.QUEUED, ngpus=1, at=_t(2)),
    ]
    starts = booking.plan(records, FOUR).starts
    assert starts == {"fenced": (3,), "open": (0,)}


def test_book_refuses_with_data_or_queues() -> None:
    running = _job("exp1", JobState.RUNNING, gpus=(2,), held=(2,), at=_t(0))
    clash = _job("clash", JobState.QUEUED, gpus=(2,), at=_t(1), wait=False)
    with pytest.raises(GpuBusy) as err:
        booking.book(clash, [running, clash], FOUR)
    assert err.value.wait.blockers == (Blocker(2, BlockKind.HELD, job="exp1"),)
    line = render.error_text(err.value)
    assert line.startswith("GPU 2 is held by job exp1; pick other GPUs")
    queued = _job("queued", JobState.QUEUED, gpus=(2,), at=_t(1))
    got, wait = booking.book(queued, [running, queued], FOUR)
    assert got is None and wait is not None and wait.blockers[0].job == "exp1"
    forced = _job("forced", JobState.QUEUED, gpus=(2,), at=_t(1), force=True, wait=False)
    assert booking.book(forced, [running, forced], FOUR) == ((2,), None)
    free = _job("free", JobState.QUEUED, ngpus=2, at=_t(1), wait=False)
    assert booking.book(free, [running, free], FOUR) == ((0, 1), None)
    too_many = _job("greedy", JobState.QUEUED, ngpus=5, at=_t(1))
    with pytest.raises(UsageError, match="--ngpus 5 asks for more GPUs"):
        booking.book(too_many, [too_many], FOUR)


def test_count_wait_says_how_many_are_free() -> None:
    records = [
        _job("a", JobState.RUNNING, gpus=(0, 1, 2), held=(0, 1, 2), at=_t(0)),
        _job("b", JobState.QUEUED, ngpus=2, at=_t(1)),
    ]
    waits = booking.plan(records, FOUR).waits
    text = render.wait_text(waits["b"])
    assert text.startswith("only 1 of the 2 GPUs asked for are free (GPU 0 is held by job a;")


# ---- slots, dependencies and priority ----------------------------------------------------


def test_a_parallel_limit_starts_jobs_in_fifo_order_as_slots_free() -> None:
    records = [_job(f"j{i}", JobState.QUEUED, at=_t(i)) for i in range(4)]
    result = booking.plan(records, None, limits=booking.Limits(total=2))
    assert result.starts == {"j0": (), "j1": ()}
    assert [result.waits[n].position for n in ("j2", "j3")] == [1, 2]
    assert render.wait_text(result.waits["j2"]) == "2 of 2 jobs allowed at once are running"
    running = [_job(n, JobState.RUNNING, at=_t(i)) for i, n in enumerate(("j0", "j1"))]
    again = booking.plan([*running, *records[2:]], None, limits=booking.Limits(total=2))
    assert again.starts == {}
    done = [*running[1:], *records[2:]]  # j0 ended: one slot
    assert booking.plan(done, None, limits=booking.Limits(total=2)).starts == {"j2": ()}


def test_a_group_limit_holds_only_that_group() -> None:
    records = [
        _job("s0", JobState.RUNNING, at=_t(0), group="sweep"),
        _job("s1", JobState.QUEUED, at=_t(1), group="sweep"),
        _job("other", JobState.QUEUED, at=_t(2)),
    ]
    result = booking.plan(records, None, limits=booking.Limits(groups={"sweep": 1}))
    assert result.starts == {"other": ()}
    assert render.wait_text(result.waits["s1"]) == (
        "1 of 1 jobs of group sweep allowed at once are running"
    )


def test_jobs_that_need_no_gpu_never_wait_behind_ones_that_do() -> None:
    records = [
        _job("busy", JobState.RUNNING, gpus=(0, 1, 2, 3), held=(0, 1, 2, 3), at=_t(0)),
        _job("gpu", JobState.QUEUED, ngpus=1, at=_t(1)),
        _job("cpu", JobState.QUEUED, at=_t(2)),
    ]
    result = booking.plan(records, FOUR)
    assert result.starts == {"cpu": ()} and result.waits["gpu"].for_gpus


def test_priority_jumps_the_queue() -> None:
    records = [
        _job("early", JobState.QUEUED, ngpus=1, at=_t(1)),
        _job("urgent", JobState.QUEUED, ngpus=1, at=_t(2), priority=5),
    ]
    one_gpu = _box(_gpu(0))
    assert booking.plan(records, one_gpu).starts == {"urgent": (0,)}


def test_dependencies_wait_then_start_or_fail() -> None:
    after = _job("eval", JobState.QUEUED, at=_t(1), after=("train",))
    waiting = booking.plan([after], None, deps={"train": JobState.RUNNING})
    assert waiting.waits["eval"].after == ("train",)
    assert render.wait_text(waiting.waits["eval"]) == "waiting for train to end"
    assert booking.plan([after], None, deps={"train": JobState.SUCCEEDED}).starts == {"eval": ()}
    failed = booking.plan([after], None, deps={"train": JobState.FAILED})
    assert failed.failed == {"eval": ("train", JobState.FAILED)} and not failed.starts
    gone = booking.plan([after], None, deps={})
    assert gone.failed == {"eval": ("train", None)}
    anyway = _job("eval", JobState.QUEUED, at=_t(1), after=("train",), after_any=True)
    assert booking.plan([anyway], None, deps={"train": JobState.STOPPED}).starts == {"eval": ()}
