"""start's option table and the command-line parser: every option reaches the request, the
script's arguments arrive verbatim, --like copies and overrides, sweep takes the table's
options, Slurm's options need --slurm, and bad usage is one line with exit code 2.

Through the CLI's own parse functions: no tmux, no Slurm, no job started.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handyjobs.backends.slurm import options as slurm_options
from handyjobs.backends.slurm.sbatch import SlurmRequest
from handyjobs.cli import main
from handyjobs.cli import start as startcli
from handyjobs.cli import sweep as sweepcli
from handyjobs.cli.commands import COMMANDS, command
from handyjobs.cli.parse import help_text, parse
from handyjobs.core import options as table
from handyjobs.core import registry
from handyjobs.core.options import Option
from handyjobs.core.records import BatchSpec, JobRecord, JobSpec, JobState, Run, utcnow
from handyjobs.core.spec import StartRequest
from handyjobs.errors import UsageError

START = command("start")
SWEEP = command("sweep")
#: What to type for an option of each kind, and the value the request then holds.
SAMPLES: dict[str, tuple[list[str], object]] = {
    "flag": ([], True),
    "int": (["7"], 7),
    "float": (["2.5"], 2.5),
    "str": (["v"], "v"),
    "list": (["a"], ["a"]),
}


def request(*argv: str) -> StartRequest:
    """The request ``handyjobs start ARGV`` makes (nothing is started)."""
    return startcli.make_request(parse(START, list(argv)))


def typed(opt: Option) -> list[str]:
    """The option as typed, with a sample value."""
    return [opt.flags[-1], *SAMPLES[opt.kind][0]]


# ---- every option reaches the request ---------------------------------------------------------


@pytest.mark.parametrize(
    "opt", [o for o in table.START_OPTIONS if o.field is not None], ids=lambda o: o.name
)
def test_each_start_option_fills_its_request_field(opt: Option) -> None:
    req = request("train.py", *typed(opt))
    assert getattr(req, opt.field or "") == SAMPLES[opt.kind][1]
    for also, value in opt.sets:
        assert getattr(req, also) == value
    assert req.script == "train.py" and list(req.args) == []
    assert request("train.py") != req  # the default is something else


@pytest.mark.parametrize("opt", slurm_options.OPTIONS, ids=lambda o: o.name)
def test_each_slurm_option_fills_the_slurm_part(opt: Option) -> None:
    req = request("train.py", *typed(opt))
    assert isinstance(req.backend, SlurmRequest)
    value = getattr(req.backend, opt.field or "")
    expected = SAMPLES[opt.kind][1]
    assert (list(value) if opt.kind == "list" else value) == expected
    assert req.backend.submit is (opt.name == "slurm")


def test_no_slurm_option_no_slurm_part() -> None:
    req = request("train.py", "--gpus", "1")
    assert req.backend is None and req.goes_to == "tmux"


def test_every_option_is_declared_once_and_start_takes_them_all() -> None:
    names = [o.name for o in startcli.OPTIONS]
    flags = [f for o in startcli.OPTIONS for f in o.flags]
    assert len(names) == len(set(names)) and len(flags) == len(set(flags))
    assert START.options == startcli.OPTIONS
    assert {"slurm", "nodes", "signal_before"} <= set(names)


# ---- where options go -------------------------------------------------------------------------


def test_options_before_or_after_the_script_make_the_same_request() -> None:
    before = request("--gpus", "1,2", "--name", "exp", "--env", "A=1", "-m", "pkg.train", "x")
    after = request("-m", "pkg.train", "--gpus", "1,2", "x", "--name", "exp", "--env", "A=1")
    assert before == after
    assert before.gpus == "1,2" and before.module and list(before.args) == ["x"]


def test_script_arguments_arrive_verbatim() -> None:
    tricky = ["a b", "'q'", '"dq"', "$HOME", "$(id)", "a;b", "*", "--", "-x"]
    req = request("train.py", "--synch", "--lr=3e-4", "-q", "7", "--", "--gpus", "1", *tricky)
    assert list(req.args) == ["--synch", "--lr=3e-4", "-q", "7", "--gpus", "1", *tricky]
    assert req.gpus is None  # after --, --gpus is the script's


def test_unknown_options_after_the_script_go_to_it_and_known_ones_do_not() -> None:
    req = request("train.py", "--synch", "--cpu", "--name", "n", "--epochs", "3")
    assert list(req.args) == ["--synch", "--epochs", "3"]
    assert req.cpu and req.name == "n"


def test_short_flags_together_as_click_reads_them() -> None:
    assert request("-mx", "pkg.run").module and request("-mx", "pkg.run").executable
    # An unknown letter goes on to the script as a word of its own, in place.
    req = request("-mq", "pkg.train")
    assert req.module and req.script == "-q" and list(req.args) == ["pkg.train"]


def test_an_option_takes_the_next_word_whatever_it_looks_like() -> None:
    assert request("--name", "--cpu", "train.py").name == "--cpu"
    assert request("--priority", "-1", "train.py").priority == -1
    assert request("--name=a=b", "train.py").name == "a=b"


def test_repeatable_options_collect_and_others_keep_the_last() -> None:
    req = request("--env", "A=1", "train.py", "--env=B=2", "--ngpus", "1", "--ngpus", "2")
    assert list(req.env) == ["A=1", "B=2"] and req.ngpus == 2


# ---- --like -----------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state folder of our own."""
    root = tmp_path / "state"
    monkeypatch.setenv("HANDYJOBS_HOME", str(root))
    return root


def put(root: Path, name: str, spec: JobSpec) -> None:
    """A finished job with this spec, in the registry."""
    stamp = utcnow()
    run = Run(1, f"id-{name}", JobState.SUCCEEDED, stamp, started_at=stamp, ended_at=stamp)
    run.exit_code = 0
    with registry.locked(root) as reg:
        reg.put(JobRecord(name, spec, f"/s/{name}.log", stamp, [run]))


LOCAL = JobSpec(
    script="/w/train.py",
    args=("--x", "1"),
    cwd="/w",
    python="/venv/bin/python",
    gpus=(2, 3),
    nproc=2,
    env=(("A", "1"),),
    wait=True,
    force=True,
    group="g",
    after=("dep",),
    after_any=True,
    priority=3,
    on_exit=("notify", "a b"),
    max_restarts=2,
)


def test_like_copies_what_the_table_says(home: Path) -> None:
    put(home, "src", LOCAL)
    req = request("--like", "src")
    assert (req.script, list(req.args), req.cwd, req.python) == (
        "/w/train.py",
        ["--x", "1"],
        "/w",
        "/venv/bin/python",
    )
    assert (req.gpus, req.nproc, list(req.env)) == ("2,3", 2, ["A=1"])
    assert req.wait is True and req.force is True
    assert (req.group, list(req.after), req.after_any, req.priority) == ("g", ["dep"], True, 3)
    assert (req.on_exit, req.max_restarts) == ("notify 'a b'", 2)
    assert req.name is None and req.backend is None  # a name is the new job's own
    copied = {o.field for o in table.START_OPTIONS if o.like}
    assert {"gpus", "env", "after", "on_exit", "executable", "module"} <= copied
    assert not {"name", "nnodes", "rdzv_id"} & copied


def test_like_with_typed_options_changes_only_those(home: Path) -> None:
    put(home, "src", LOCAL)
    req = request(
        "--like", "src", "--gpus", "5", "--env", "B=2", "--priority", "0", "--after", "other",
        "--name", "n2", "--", "--lr", "1",
    )  # fmt: skip
    assert (req.gpus, list(req.env), req.priority, req.name) == ("5", ["A=1", "B=2"], 0, "n2")
    assert (list(req.after), req.after_any) == (["other"], False)
    assert list(req.args) == ["--lr", "1"]  # the new arguments replace the old
    assert (req.nproc, req.group, req.python) == (2, "g", "/venv/bin/python")  # kept


def test_like_refuses_nnodes(home: Path) -> None:
    put(home, "src", LOCAL)
    with pytest.raises(UsageError, match="--nnodes without --like"):
        request("--like", "src", "--nnodes", "2")


def test_like_of_a_local_job_sent_to_slurm_asks_for_its_gpus_per_node(home: Path) -> None:
    put(home, "src", LOCAL)
    req = request("--like", "src", "--slurm", "--time", "10")
    assert req.backend == SlurmRequest(True, gpus_per_node=2, time="10")
    assert (req.gpus, req.ngpus, req.priority) == (None, None, 0)
    assert req.wait is False and req.force is False
    told = request("--like", "src", "--slurm", "--gpus-per-node", "4")
    assert told.backend == SlurmRequest(True, gpus_per_node=4)


def test_like_of_a_slurm_job_goes_to_slurm_again_with_the_options_typed(home: Path) -> None:
    put(home, "big", JobSpec(script="/w/t.py", slurm=BatchSpec(nodes=2, time="1:00:00")))
    req = request("--like", "big", "--time", "2:00:00")
    assert req.goes_to == "slurm"
    assert req.backend == SlurmRequest(True, nodes=2, time="2:00:00", signal_before_s=60)


def test_like_of_a_missing_job_is_an_error(home: Path) -> None:
    with pytest.raises(Exception, match="no job named nope"):
        request("--like", "nope")


# ---- sweep ------------------------------------------------------------------------------------


def sweep_requests(*argv: str) -> list[StartRequest]:
    p = parse(SWEEP, list(argv))
    grid = sweepcli.parse_grid(p.items("grid"))
    names = sweepcli.point_names("t", grid)
    return sweepcli.point_requests(p, "t.py", grid, "g", names)


def test_sweep_takes_the_options_the_table_marks() -> None:
    own = {"grid", "arg_format", "group", "prefix", "parallel"}
    marked = {o.name for o in startcli.OPTIONS if o.sweep}
    assert {o.name for o in SWEEP.options} == own | marked
    assert {"gpus", "env", "after", "on_exit", "slurm", "nodes"} <= marked
    assert not {"name", "wait", "force", "like", "nnodes", "attach"} & marked


@pytest.mark.parametrize("opt", [o for o in table.START_OPTIONS if o.sweep], ids=lambda o: o.name)
def test_each_sweep_option_reaches_every_point(opt: Option) -> None:
    reqs = sweep_requests("t.py", "--grid", "lr=1,2", *typed(opt))
    assert len(reqs) == 2
    for req in reqs:
        value = getattr(req, opt.field or "")
        if opt.name == "env":  # the sweep adds its index and size
            assert value[0] == "a" and "HANDYJOBS_SWEEP_SIZE=2" in value
        else:
            assert value == SAMPLES[opt.kind][1]


def test_sweep_points_queue_here_and_not_on_slurm() -> None:
    here = sweep_requests("t.py", "--grid", "lr=1,2", "--", "--epochs", "1")
    assert [list(r.args) for r in here] == [
        ["--lr=1", "--epochs", "1"],
        ["--lr=2", "--epochs", "1"],
    ]
    assert all(r.wait and r.group == "g" and r.backend is None for r in here)
    slurm = sweep_requests("t.py", "--grid", "lr=1", "--slurm", "--nodes", "2")
    assert not slurm[0].wait and slurm[0].backend == SlurmRequest(True, nodes=2)


def test_start_options_sweep_does_not_take_go_to_the_script() -> None:
    (req,) = sweep_requests("t.py", "--grid", "lr=1", "--wait", "--name", "x")
    assert list(req.args) == ["--lr=1", "--wait", "--name", "x"]


# ---- Slurm options need --slurm ---------------------------------------------------------------


@pytest.mark.parametrize(
    "opt", [o for o in slurm_options.OPTIONS if o.name != "slurm"], ids=lambda o: o.name
)
def test_a_slurm_option_without_slurm_is_refused(opt: Option) -> None:
    req = request("t.py", *typed(opt))
    assert req.backend is not None and req.goes_to == "tmux"
    with pytest.raises(UsageError, match=f"^{opt.flags[-1]} is for Slurm jobs: add --slurm$"):
        req.backend.check(req)


def test_with_slurm_the_options_make_the_spec_and_local_picks_are_refused() -> None:
    req = request("t.py", "--slurm", "--nodes", "2", "--time", "90", "--slurm-arg=--qos=high")
    assert req.backend is not None
    spec = req.backend.check(req)["slurm"]
    assert (spec.nodes, spec.time, spec.extra) == (2, "90", ("--qos=high",))
    for local in (["--gpus", "1"], ["--wait"], ["--priority", "2"], ["--nnodes", "2"]):
        bad = request("t.py", "--slurm", *local)
        assert bad.backend is not None
        with pytest.raises(UsageError):
            bad.backend.check(bad)


# ---- help, completion, errors -----------------------------------------------------------------


def test_help_lists_every_option_and_wins_over_missing_arguments() -> None:
    assert parse(SWEEP, ["--help"]).help  # no SCRIPT, still help
    text = help_text(START)
    for opt in startcli.OPTIONS:
        assert opt.flags[-1] in text
    assert "Slurm (with --slurm):" in text and "[default: 0]" in text


def test_completion_app_offers_exactly_the_declared_options() -> None:
    import typer.main

    from handyjobs.cli import app

    root: Any = typer.main.get_command(app.build())
    assert set(root.commands) == set(COMMANDS)
    for name in ("start", "sweep", "stop"):
        cmd = command(name)
        declared = {o.name for o in cmd.options} | {a.name for a in cmd.args}
        assert {p.name for p in root.commands[name].params} - {"help"} == declared


@pytest.fixture
def cli_main() -> Iterator[None]:
    """main() disables the garbage collector for its short life; give it back to pytest."""
    yield
    gc.enable()


@pytest.mark.usefixtures("cli_main")
@pytest.mark.parametrize(
    "argv",
    [
        ["start", "t.py", "--ngpus", "two"],
        ["start", "t.py", "--gpus"],
        ["start", "t.py", "--cpu=yes"],
        ["start"],
        ["start", "t.py", "--after", "a", "--after-any", "b"],
        ["start", "t.py", "--slurm", "--attach"],
        ["stop", "--nope"],
        ["show"],
        ["logs", "a", "b", "--rank", "1"],
        ["bogus"],
    ],
)
def test_bad_usage_is_one_line_and_exit_code_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith("handyjobs: error: ") and out.err.count("\n") == 1
