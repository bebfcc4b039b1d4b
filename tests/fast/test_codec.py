"""Every record survives save-and-load unchanged, and its JSON keeps the layout of its files."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handyjobs import structs
from handyjobs.core import codec
from handyjobs.core.records import (
    SCHEMA_VERSION,
    BatchSpec,
    Blocker,
    BlockKind,
    ClusterState,
    Cost,
    GpuBaseline,
    GpuPolicy,
    GpuUse,
    GpuUser,
    JobRecord,
    JobSpec,
    JobState,
    LaunchEnv,
    LostKind,
    NodeCost,
    Outcome,
    ProcId,
    Reason,
    Rendezvous,
    Run,
    RunStatus,
    Wait,
)

# ---- strategies: one per record --------------------------------------------------------------


def record(cls: type[Any], **given: Any) -> st.SearchStrategy[Any]:
    """Records of ``cls``: the fields named here from these strategies, any other field (one
    added later) inferred from its type, so that a new field is round-tripped too."""
    # The class's own annotations: a struct's __init__ is compiled on first use, so hypothesis
    # cannot read the types from its signature.
    namespace = {**vars(sys.modules[cls.__module__]), "Any": Any}
    return st.builds(
        cls,
        **{
            f.name: given[f.name] if f.name in given else st.from_type(eval(f.type, namespace))
            for f in structs.fields(cls)
        },
    )


texts = st.text(max_size=6)
opt_texts = st.none() | texts
keys = st.text(st.characters(codec="ascii", categories=("L", "Nd")), min_size=1, max_size=3)
ints = st.integers(-(2**63), 2**63)
small = st.integers(0, 1 << 20)
opt_ints = st.none() | ints
floats = st.floats(allow_nan=False, allow_infinity=False)
int_tuples = st.lists(small, max_size=3).map(tuple)
str_tuples = st.lists(texts, max_size=3).map(tuple)
#: Pairs that repeat keys on purpose: a record keeping a mapping as pairs must hold one value
#: per key, or a save (a JSON object) would lose the others.
pairs = st.lists(st.tuples(keys, texts), max_size=4).map(tuple)
stamps = st.datetimes().map(lambda t: t.isoformat(timespec="milliseconds") + "Z")
json_values = st.recursive(
    st.none() | st.booleans() | ints | floats | texts,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(texts, inner, max_size=2),
    max_leaves=5,
)


def tuples_of(strategy: st.SearchStrategy[Any], size: int = 2) -> st.SearchStrategy[Any]:
    """Tuples of up to ``size`` items."""
    return st.lists(strategy, max_size=size).map(tuple)


proc_ids = record(ProcId, pid=small, start=st.none() | small)
gpu_users = record(GpuUser, pid=small, user=opt_texts, name=opt_texts)
reasons = record(
    Reason, kind=st.sampled_from(LostKind), detail=opt_texts, pids=int_tuples, job=opt_texts
)
blockers = record(
    Blocker,
    gpu=small,
    kind=st.sampled_from(BlockKind),
    job=opt_texts,
    processes=tuples_of(gpu_users),
    used_mib=opt_ints,
    threshold_mib=opt_ints,
    detail=opt_texts,
)
waits = record(
    Wait,
    needed=small,
    free=small,
    by_count=st.booleans(),
    position=opt_ints,
    blockers=tuples_of(blockers),
    after=str_tuples,
    limit=opt_ints,
    running=opt_ints,
    group=opt_texts,
    scheduler=opt_texts,
    reason=opt_texts,
)
policies = record(GpuPolicy, allowed=st.none() | int_tuples, threshold_mib=ints)
rendezvous = record(Rendezvous, nnodes=small, node_rank=small, endpoint=texts, rdzv_id=texts)
slurm_specs = record(
    BatchSpec,
    nodes=small,
    gpus_per_node=opt_ints,
    partition=opt_texts,
    time=opt_texts,
    account=opt_texts,
    mem=opt_texts,
    constraint=opt_texts,
    extra=str_tuples,
    requeue=st.booleans(),
    signal_before_s=ints,
)
cluster_states = record(
    ClusterState,
    scheduler=texts,
    job_id=texts,
    state=texts,
    verdict=st.sampled_from(JobState),
    reason=opt_texts,
    nodes=opt_texts,
    exit_code=opt_ints,
    signal=opt_ints,
    restarts=small,
    held=st.booleans(),
)
specs = record(
    JobSpec,
    script=texts,
    args=str_tuples,
    module=st.booleans(),
    cwd=texts,
    python=texts,
    gpus=st.none() | int_tuples,
    ngpus=opt_ints,
    cpu=st.booleans(),
    nproc=opt_ints,
    env=pairs,
    wait=st.booleans(),
    force=st.booleans(),
    policy=policies,
    executable=st.booleans(),
    group=opt_texts,
    after=str_tuples,
    after_any=st.booleans(),
    priority=ints,
    on_exit=str_tuples,
    max_restarts=opt_ints,
    params=pairs,
    rdzv=st.none() | rendezvous,
    slurm=st.none() | slurm_specs,
)
gpu_uses = record(
    GpuUse,
    index=small,
    peak_memory_mib=ints,
    mean_utilization_pct=st.none() | floats,
    samples=small,
)
node_costs = record(
    NodeCost,
    node=texts,
    cpu_time_s=floats,
    peak_rss_bytes=ints,
    max_rss_bytes=ints,
    gpus=tuples_of(gpu_uses),
)
costs = record(
    Cost,
    cpu_time_s=floats,
    peak_rss_bytes=ints,
    max_rss_bytes=ints,
    gpus=tuples_of(gpu_uses),
    restarts=small,
    samples=small,
    interval_s=floats,
    nodes=tuples_of(node_costs),
)
outcomes = record(
    Outcome,
    exit_code=opt_ints,
    signal=opt_ints,
    ended_at=stamps,
    leftovers=small,
    log_error=opt_texts,
    by_scheduler=st.booleans(),
    cost=st.none() | costs,
)
baselines = record(GpuBaseline, gpu=small, memory_used_mib=ints, pids=int_tuples)
runs = record(
    Run,
    run=small,
    run_id=texts,
    state=st.sampled_from(JobState),
    created_at=stamps,
    started_at=st.none() | stamps,
    ended_at=st.none() | stamps,
    exit_code=opt_ints,
    signal=opt_ints,
    gpus=int_tuples,
    nproc=small,
    rendezvous=opt_texts,
    backend=texts,
    handle=st.dictionaries(keys, texts, max_size=2),
    boot_id=opt_texts,
    runner=st.none() | proc_ids,
    main=st.none() | proc_ids,
    stop_requested=st.booleans(),
    wait=st.none() | waits,
    reason=st.none() | reasons,
    log_error=opt_texts,
    leftovers=small,
    cluster=st.none() | cluster_states,
    baseline=tuples_of(baselines),
    cost=st.none() | costs,
)
job_records = record(
    JobRecord,
    name=texts,
    spec=specs,
    log_path=texts,
    created_at=stamps,
    runs=st.lists(runs, min_size=1, max_size=2),
    git=st.none() | st.dictionaries(texts, json_values, max_size=2),
)
run_statuses = record(
    RunStatus,
    run_id=texts,
    runner=proc_ids,
    boot_id=opt_texts,
    main=st.none() | proc_ids,
    started_at=st.none() | stamps,
    gpus=st.none() | int_tuples,
    rendezvous=opt_texts,
    outcome=st.none() | outcomes,
    lost=st.none() | reasons,
    requeued=st.booleans(),
    schema_version=small,
)
launch_envs = record(
    LaunchEnv, name=texts, env=st.dictionaries(keys, texts, max_size=3), schema_version=small
)

STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    ProcId: proc_ids,
    GpuUser: gpu_users,
    Reason: reasons,
    Blocker: blockers,
    Wait: waits,
    GpuPolicy: policies,
    Rendezvous: rendezvous,
    BatchSpec: slurm_specs,
    ClusterState: cluster_states,
    JobSpec: specs,
    GpuUse: gpu_uses,
    Cost: costs,
    NodeCost: node_costs,
    Outcome: outcomes,
    GpuBaseline: baselines,
    Run: runs,
    JobRecord: job_records,
    RunStatus: run_statuses,
    LaunchEnv: launch_envs,
}
# A record inside a record (a field not named in its strategy) is drawn from these.
for _cls, _strategy in STRATEGIES.items():
    st.register_type_strategy(_cls, _strategy)

# Sized so that the whole file runs in a few seconds; the big records get fewer examples.
_EXAMPLES = {JobRecord: 40, Run: 60, RunStatus: 60, JobSpec: 80}
_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


# ---- properties ------------------------------------------------------------------------------


def test_every_record_type_has_a_strategy() -> None:
    import handyjobs.core.records as records

    base = codec.JsonRecord
    found = {
        obj
        for obj in vars(records).values()
        if isinstance(obj, type) and issubclass(obj, base) and obj is not base
    }
    assert found == set(STRATEGIES)


@pytest.mark.parametrize("cls", list(STRATEGIES), ids=lambda c: c.__name__)
def test_every_record_survives_save_and_load(cls: type[Any]) -> None:
    @settings(max_examples=_EXAMPLES.get(cls, 100), **_SETTINGS)  # type: ignore[arg-type]
    @given(STRATEGIES[cls])
    def round_trip(value: Any) -> None:
        d = value.to_dict()
        assert cls.from_dict(d) == value
        saved = json.dumps(d, allow_nan=False, ensure_ascii=False)  # JSON-ready, strictly
        assert cls.from_dict(json.loads(saved)) == value
        assert json.dumps(cls.from_dict(json.loads(saved)).to_dict(), ensure_ascii=False) == saved

    round_trip()


@settings(max_examples=100, **_SETTINGS)  # type: ignore[arg-type]
@given(pairs, pairs)
def test_a_spec_holds_env_and_params_as_a_save_gives_them_back(env: Any, params: Any) -> None:
    spec = JobSpec(script="x.py", env=env, params=params)
    assert spec.env == tuple(sorted(dict(env).items()))  # one value per name (the last), sorted
    assert spec.params == tuple(dict(params).items())  # grid order kept, one value per key
    assert JobSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


# ---- the cases that were lost on the way before ----------------------------------------------


def test_the_cases_a_save_used_to_change() -> None:
    cost = Cost(cpu_time_s=0.30000000000000004)  # a sum of clock ticks, not rounded by hand
    assert Cost.from_dict(json.loads(json.dumps(cost.to_dict()))) == cost
    spec = JobSpec(script="x.py", env=(("B", "1"), ("A", "2")), params=(("lr", "1"), ("lr", "2")))
    assert spec.env == (("A", "2"), ("B", "1")) and spec.params == (("lr", "2"),)
    assert JobSpec.from_dict(spec.to_dict()) == spec
    wait = Wait(0, 0, reason="Priority")  # a reason with no scheduler named
    assert Wait.from_dict(wait.to_dict()) == wait
    env = LaunchEnv("exp1", {"A": "1"}, schema_version=1)
    assert LaunchEnv.from_dict(env.to_dict()) == env


# ---- the layout of the files stays the one they had ------------------------------------------


def test_keys_in_the_order_the_files_had() -> None:
    run = Run(1, "r1", JobState.RUNNING, "2026-01-01T00:00:00.000Z", runner=ProcId(5, 7))
    d = run.to_dict()
    assert list(d)[14:18] == ["runner", "main", "pids", "stop_requested"]
    assert d["pids"] == {"runner": 5}
    rec = JobRecord("exp1", JobSpec(script="t.py"), "/l", "2026-01-01T00:00:00.000Z", [run])
    assert list(rec.to_dict()) == [
        *("name", "state", "command", "gpus", "nproc", "wait", "reason", "created_at"),
        *("started_at", "ended_at", "exit_code", "signal", "backend", "session", "log_path"),
        *("log_error", "cost", "git", "spec", "runs"),
    ]
    assert list(JobSpec(script="t.py").to_dict())[-3:] == ["params", "rdzv", "slurm"]
    status = RunStatus("r1", ProcId(5)).to_dict()
    assert list(status)[:2] == ["schema_version", "run_id"]
    assert status["schema_version"] == SCHEMA_VERSION
    assert list(LaunchEnv("exp1", {}).to_dict()) == ["schema_version", "name", "env"]


def test_defaults_left_out_where_the_files_left_them_out() -> None:
    assert Blocker(3, BlockKind.MISSING).to_dict() == {"gpu": 3, "kind": "missing"}
    assert Wait(1, 0).to_dict() == {
        **{"needed": 1, "free": 0, "by_count": False, "position": None, "blockers": []},
        **{"after": [], "limit": None, "running": None, "group": None},
    }
    slurm = Wait(0, 0, scheduler="slurm", reason="Priority").to_dict()
    assert list(slurm)[-2:] == ["scheduler", "reason"]
    cluster = ClusterState("slurm", "7", "PENDING", JobState.QUEUED).to_dict()
    assert list(cluster)[-1] == "restarts"  # flags at their default stay out of the file


# ---- reading what a person or an older release wrote ----------------------------------------


def test_reading_is_lenient_where_files_differ_and_strict_where_they_are_wrong() -> None:
    d = ClusterState("slurm", "7", "RUNNING", JobState.RUNNING).to_dict()
    # a job id written as a number, a key from a newer release, null for a default
    assert ClusterState.from_dict({**d, "job_id": 7, "new_key": 1, "restarts": None}) == (
        ClusterState("slurm", "7", "RUNNING", JobState.RUNNING)
    )
    assert JobSpec.from_dict({"script": "x.py", "policy": None}).policy == GpuPolicy()
    with pytest.raises(KeyError):
        ClusterState.from_dict({k: v for k, v in d.items() if k != "verdict"})
    with pytest.raises(ValueError):
        ClusterState.from_dict({**d, "verdict": "sleeping"})
    with pytest.raises(TypeError):
        ClusterState.from_dict({**d, "restarts": [1]})
    with pytest.raises(TypeError):
        LaunchEnv.from_dict({"name": "exp1", "env": ["A=1"]})
    with pytest.raises(TypeError):
        Run.from_dict({**Run(1, "r", JobState.QUEUED, "t").to_dict(), "created_at": None})


def test_the_codec_refuses_what_it_cannot_write_both_ways() -> None:
    @structs.mutable
    class Either(codec.JsonRecord):
        value: int | str

    @structs.mutable
    class Misnamed(codec.JsonRecord):
        json_layout = codec.Layout(order=("nothing",))
        value: int = 0

    with pytest.raises(TypeError, match=r"only X \| None"):
        Either(1).to_dict()
    with pytest.raises(TypeError, match="bad layout"):
        Misnamed().to_dict()
