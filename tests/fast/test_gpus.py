"""Tests of handyjobs.gpus.discovery: parsers on captured nvidia-smi output, specs, discovery."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Sandbox, wait_until

from handyjobs.core import booking
from handyjobs.core.records import GpuPolicy
from handyjobs.errors import UsageError
from handyjobs.gpus import discovery as gpus
from handyjobs.gpus import nvml, pidinfo, select, smi
from handyjobs.gpus.discovery import Discovery, GpuInfo, GpuProcess

DATA = REPO / "tests" / "data"


def _read(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def _gpu(index: int, used: int = 4, procs: tuple[GpuProcess, ...] = ()) -> GpuInfo:
    return GpuInfo(
        index=index,
        uuid=f"GPU-fake-{index}",
        name="NVIDIA A100-SXM4-80GB",
        memory_used_mib=used,
        memory_total_mib=81920,
        utilization_pct=0,
        processes=procs,
    )


def _box(*gpu_list: GpuInfo) -> Discovery:
    return Discovery("fake", tuple(gpu_list))


EIGHT = _box(*(_gpu(i) for i in range(8)))


# --------------------------------------------------------------------------- parsers


def test_parse_smi_gpus_a100_box() -> None:
    parsed = smi.parse_gpus(_read("nvidia-smi-gpus-a100x8.csv"))
    assert [g.index for g in parsed] == list(range(8))
    first = parsed[0]
    assert first.uuid == "GPU-4a1d3b58-8f2c-6d1e-9a7b-3c5e2f1d0a91"
    assert first.name == "NVIDIA A100-SXM4-80GB"
    assert (first.memory_used_mib, first.memory_total_mib, first.utilization_pct) == (
        62341,
        81920,
        97,
    )
    assert all(g.processes == () for g in parsed)


def test_parse_smi_apps_a100_box() -> None:
    apps = smi.parse_apps(_read("nvidia-smi-apps-a100x8.csv"))
    gpu3 = apps["GPU-9e8d7c6b-5a4f-3e2d-1c0b-a9f8e7d6c5b4"]
    assert [(p.pid, p.used_memory_mib, p.name) for p in gpu3] == [
        (190877, 20934, "python3"),
        (191002, 624, "/usr/bin/python3.10"),
    ]
    assert sum(len(v) for v in apps.values()) == 4
    assert all(p.user is None for v in apps.values() for p in v)  # pure: no /proc lookups


def test_parse_smi_utilization_na_spaces_and_blank_lines() -> None:
    parsed = smi.parse_gpus(_read("nvidia-smi-gpus-util-na.csv"))
    assert [
        (g.index, g.memory_used_mib, g.memory_total_mib, g.utilization_pct) for g in parsed
    ] == [
        (0, 1, 24576, None),
        (1, 9877, 24576, 88),
    ]
    apps = smi.parse_apps(_read("nvidia-smi-apps-util-na.csv"))
    procs = apps["GPU-6c8d0e2f-3a4b-5c6d-7e8f-9a0b1c2d3e4f"]
    assert procs == [
        GpuProcess(52114, None, None, None),  # "[N/A]" memory, "[Not Found]" name
        GpuProcess(52230, 9860, None, "/opt/conda/bin/python"),
    ]


def test_parse_smi_mig_rows() -> None:
    parsed = smi.parse_gpus(_read("nvidia-smi-gpus-mig.csv"))
    assert [g.utilization_pct for g in parsed] == [None, None]  # "[N/A]", "[Not Supported]"
    apps = smi.parse_apps(_read("nvidia-smi-apps-mig.csv"))
    assert apps == {
        "GPU-2d4f6a8c-0e1b-3d5f-7a9c-1e3b5d7f9a2c": [GpuProcess(77301, None, None, "python")]
    }


def test_parse_smi_empty_and_no_devices() -> None:
    assert smi.parse_gpus("") == []
    assert smi.parse_gpus("No devices were found\n") == []
    assert smi.parse_apps("\n\n") == {}


def test_parse_smi_name_with_comma_and_process_path_with_comma() -> None:
    (g,) = smi.parse_gpus("3, GPU-abc, Odd, Name, 10, 100, 5\n")
    assert (g.index, g.name, g.memory_used_mib) == (3, "Odd, Name", 10)
    apps = smi.parse_apps("GPU-abc, 12, 34, /home/x/a,b/python\n")
    assert apps["GPU-abc"][0].name == "/home/x/a,b/python"


@pytest.mark.parametrize(
    ("parser", "text"),
    [
        (smi.parse_gpus, "0, GPU-abc, A100, 4\n"),
        (smi.parse_gpus, "x, GPU-abc, A100, 4, 100, 0\n"),
        (smi.parse_gpus, "0, GPU-abc, A100, lots, 100, 0\n"),
        (smi.parse_apps, "GPU-abc, 12\n"),
        (smi.parse_apps, "GPU-abc, twelve, 3, python\n"),
    ],
)
def test_parse_smi_garbled_raises_value_error(parser: Any, text: str) -> None:
    with pytest.raises(ValueError):
        parser(text)


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("2", ["2"]),
        ("2,4", ["2", "4"]),
        (" 2 , 4 ", ["2", "4"]),
        ("0,1,2,3,4,5,6,7", [str(i) for i in range(8)]),
        ("02", ["2"]),
        (
            "GPU-4a1d3b58-8f2c-6d1e-9a7b-3c5e2f1d0a91,3",
            ["GPU-4a1d3b58-8f2c-6d1e-9a7b-3c5e2f1d0a91", "3"],
        ),
        ("MIG-1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e", ["MIG-1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e"]),
        ("MIG-GPU-4a1d3b58/1/0", ["MIG-GPU-4a1d3b58/1/0"]),
    ],
)
def test_parse_gpu_spec_good(text: str, tokens: list[str]) -> None:
    assert select.parse_gpu_spec(text) == tokens


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--gpus is empty; give GPU indices or UUIDs separated by commas"),
        ("  ", "--gpus is empty"),
        ("2,x", "--gpus '2,x': 'x' is not a GPU index or UUID; give GPU indices or UUIDs"),
        ("-1", "'-1' is not a GPU index or UUID"),
        ("1.5", "'1.5' is not a GPU index or UUID"),
        ("2,2", "--gpus '2,2' names GPU 2 twice; give each GPU once"),
        ("2,02", "names GPU 02 twice"),
        ("GPU-abc,gpu-ABC", "'gpu-ABC' is not a GPU index or UUID"),
        ("GPU-abc,GPU-ABC", "names GPU GPU-ABC twice"),
        ("2,", "--gpus '2,' has an empty item"),
        ("2,,3", "has an empty item"),
    ],
)
def test_parse_gpu_spec_bad(text: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        select.parse_gpu_spec(text)
    text_of = str(err.value)
    assert message in text_of
    assert "\n" not in text_of
    assert err.value.exit_code == 2


def test_parse_gpu_spec_names_its_source() -> None:
    with pytest.raises(UsageError, match=r"^HANDYJOBS_GPUS '0,x'"):
        select.parse_gpu_spec("0,x", source="HANDYJOBS_GPUS")


def test_resolve_gpus_indices_and_uuids() -> None:
    assert select.resolve_gpus(["4", "GPU-fake-2"], EIGHT) == [4, 2]
    assert select.resolve_gpus(["GPU-FAKE-7"], EIGHT) == [7]  # UUIDs match in any case


def test_resolve_gpus_missing_index_lists_what_exists() -> None:
    with pytest.raises(UsageError) as err:
        select.resolve_gpus(["9"], EIGHT)
    assert str(err.value) == (
        "GPU 9 does not exist; this machine has GPUs 0-7 (see `handyjobs gpus`)"
    )


def test_resolve_gpus_several_missing_and_gaps() -> None:
    box = _box(_gpu(0), _gpu(1), _gpu(3))
    with pytest.raises(UsageError) as err:
        select.resolve_gpus(["2", "GPU-nope", "1"], box)
    assert str(err.value) == (
        "GPUs 2, GPU-nope do not exist; this machine has GPUs 0-1,3 (see `handyjobs gpus`)"
    )
    with pytest.raises(UsageError, match=r"this machine has GPU 0 \("):
        select.resolve_gpus(["1"], _box(_gpu(0)))


def test_resolve_gpus_same_gpu_by_index_and_uuid() -> None:
    with pytest.raises(UsageError, match="GPU 2 is named twice"):
        select.resolve_gpus(["2", "GPU-fake-2"], EIGHT)


def test_resolve_gpus_mig_instance() -> None:
    with pytest.raises(UsageError, match="MIG instance"):
        select.resolve_gpus(["MIG-1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e"], EIGHT)


def test_resolve_gpus_no_gpus_at_all() -> None:
    none = Discovery("none", (), note="no NVIDIA driver (libnvidia-ml not found)")
    with pytest.raises(UsageError) as err:
        select.resolve_gpus(["0"], none)
    assert str(err.value) == (
        "no NVIDIA GPU found (no NVIDIA driver (libnvidia-ml not found)); "
        "use --cpu to run on the CPU"
    )


def test_format_indices() -> None:
    assert select.format_indices([]) == ""
    assert select.format_indices([3, 0, 1, 2, 5, 7, 6]) == "0-3,5-7"


ALICE = GpuProcess(4242, 5000, "alice", "python")


# --------------------------------------------------------------------------- discover


def _write_fake(path: Path, gpu_list: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"gpus": gpu_list}), encoding="utf-8")


def _fake_gpu(index: int, **extra: Any) -> dict[str, Any]:
    gpu: dict[str, Any] = {
        "index": index,
        "name": "NVIDIA A100-SXM4-80GB",
        "memory_used_mib": 3,
        "memory_total_mib": 81920,
        "utilization_pct": 0,
    }
    gpu.update(extra)
    return gpu


def test_discover_fake_reads_fresh_each_call(tmp_path: Path) -> None:
    fake = tmp_path / "gpus.json"
    busy = {"pid": 4242, "used_memory_mib": 5000, "user": "alice", "name": "python"}
    _write_fake(fake, [_fake_gpu(1, processes=[busy]), _fake_gpu(0)])
    env = {gpus.FAKE_ENV: str(fake)}

    first = gpus.discover(env)
    assert first.source == "fake"
    assert [(g.index, g.uuid) for g in first.gpus] == [(0, "GPU-fake-0"), (1, "GPU-fake-1")]
    assert first.gpus[1].processes == (GpuProcess(4242, 5000, "alice", "python"),)
    assert booking.free_gpus(first, {}, GpuPolicy()) == [0]

    _write_fake(fake, [_fake_gpu(1), _fake_gpu(0)])  # the job on GPU 1 ended
    second = gpus.discover(env)
    assert booking.free_gpus(second, {}, GpuPolicy()) == [0, 1]


def test_discover_fake_round_trips_to_dict(tmp_path: Path) -> None:
    fake = tmp_path / "gpus.json"
    gpu = _fake_gpu(
        3,
        uuid="GPU-4a1d3b58-8f2c-6d1e-9a7b-3c5e2f1d0a91",
        utilization_pct=None,
        processes=[{"pid": 1, "used_memory_mib": None, "user": "root", "name": "init"}],
        mig=True,
        error="memory use: Insufficient Permissions",
    )
    _write_fake(fake, [gpu])
    found = gpus.discover({gpus.FAKE_ENV: str(fake)})
    assert found.gpus[0].to_dict() == gpu
    assert found.to_dict() == {
        "source": "fake",
        "note": None,
        "pids_comparable": True,
        "gpus": [gpu],
    }
    json.dumps(found.to_dict())  # JSON-ready


def test_discover_fake_can_play_a_container(tmp_path: Path) -> None:
    fake = tmp_path / "gpus.json"
    fake.write_text(json.dumps({"pids_comparable": False, "gpus": [_fake_gpu(0)]}))
    assert gpus.discover({gpus.FAKE_ENV: str(fake)}).pids_comparable is False
    fake.write_text(json.dumps({"pids_comparable": "no", "gpus": [_fake_gpu(0)]}))
    with pytest.raises(UsageError, match="pids_comparable must be true or false"):
        gpus.discover({gpus.FAKE_ENV: str(fake)})


@pytest.mark.skipif(not Path("/proc/self/comm").exists(), reason="needs Linux /proc")
def test_discover_fake_fills_user_and_name_from_proc(tmp_path: Path) -> None:
    import pwd

    fake = tmp_path / "gpus.json"
    _write_fake(fake, [_fake_gpu(0, processes=[{"pid": os.getpid(), "used_memory_mib": 10}])])
    (gpu,) = gpus.discover({gpus.FAKE_ENV: str(fake)}).gpus
    (proc,) = gpu.processes
    assert proc.user == pwd.getpwuid(os.getuid()).pw_name
    assert proc.name == Path("/proc/self/comm").read_text().strip()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read it"),
        ("{not json", "not valid JSON"),
        ("[]", 'expected an object {"gpus": [...]}'),
        ('{"gpus": [{"index": 0}]}', "gpus[0].name is missing"),
        ('{"gpus": [{"index": -1, "name": "x"}]}', "gpus[0].index must be a non-negative"),
        (
            '{"gpus": [{"index": 0, "name": "x", "memory_used_mib": true, "memory_total_mib": 1}]}',
            "memory_used_mib must be a non-negative integer",
        ),
        (
            json.dumps({"gpus": [_fake_gpu(0), _fake_gpu(0)]}),
            "gpus[1]: index 0 appears twice",
        ),
        (
            json.dumps({"gpus": [_fake_gpu(0, processes=[{"used_memory_mib": 3}])]}),
            "gpus[0].processes[0].pid is missing",
        ),
    ],
)
def test_discover_fake_bad_file(tmp_path: Path, content: str | None, message: str) -> None:
    fake = tmp_path / "gpus.json"
    if content is not None:
        fake.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError) as err:
        gpus.discover({gpus.FAKE_ENV: str(fake)})
    assert str(err.value).startswith(f"{gpus.FAKE_ENV}={fake}: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_discover_real_never_raises() -> None:
    env = {k: v for k, v in os.environ.items() if k != gpus.FAKE_ENV}
    found = gpus.discover(env)
    assert found.source in ("nvml", "nvidia-smi", "none")
    if found.source == "none":
        assert found.gpus == ()
        assert found.note


def test_discover_without_nvidia_smi_on_path_gives_a_note() -> None:
    found = gpus.query_nvidia_smi(path="")
    assert found == Discovery("none", (), note="no nvidia-smi on PATH")


#: A shell `case` arm that answers --query-gpu with a captured file, adding the MIG column
#: when it is asked for (as nvidia-smi R450 and later do).
def _smi_gpus_arm(name: str, mig: str = "Disabled") -> str:
    data = DATA / name
    return (
        f"  --query-gpu=*,mig.mode.current) sed '/^ *$/d; s/ *$/, {mig}/' \"{data}\" ;;\n"
        f'  --query-gpu=*) cat "{data}" ;;\n'
    )


def _fake_smi(bin_dir: Path, body: str) -> str:
    """Write an executable `nvidia-smi` shell script into bin_dir; return bin_dir for PATH."""
    exe = bin_dir / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    exe.chmod(0o755)
    return str(bin_dir)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX shell")
def test_query_nvidia_smi_runs_the_two_queries(tmp_path: Path) -> None:
    body = (
        'case "$1" in\n'
        + _smi_gpus_arm("nvidia-smi-gpus-a100x8.csv")
        + f'  --query-compute-apps=*) cat "{DATA}/nvidia-smi-apps-a100x8.csv" ;;\n'
        "  *) echo bad query >&2; exit 2 ;;\n"
        "esac\n"
    )
    found = gpus.query_nvidia_smi(path=_fake_smi(tmp_path, body))
    assert found.source == "nvidia-smi"
    assert [g.index for g in found.gpus] == list(range(8))
    assert [p.pid for p in found.gpus[3].processes] == [190877, 191002]
    assert not any(g.mig for g in found.gpus)
    assert [[p.pid for p in g.processes] for g in found.gpus[:2]] == [[183422], [183423]]


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX shell")
@pytest.mark.parametrize(
    ("body", "note"),
    [
        (
            "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA"
            ' driver."\nexit 9\n',
            "nvidia-smi failed (NVIDIA-SMI has failed because it couldn't communicate",
        ),
        ("exec sleep 5\n", "nvidia-smi did not answer within 0.5 s"),
        ("echo 0, GPU-a, A100, lots, 100, 0\n", "cannot read nvidia-smi's output"),
    ],
)
def test_query_nvidia_smi_failures_become_notes(tmp_path: Path, body: str, note: str) -> None:
    found = gpus.query_nvidia_smi(path=_fake_smi(tmp_path, body), timeout_s=0.5)
    assert (found.source, found.gpus) == ("none", ())
    assert found.note is not None
    assert note in found.note


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX shell")
def test_query_nvidia_smi_no_devices(tmp_path: Path) -> None:
    found = gpus.query_nvidia_smi(
        path=_fake_smi(tmp_path, 'echo "No devices were found"\nexit 6\n')
    )
    assert found == Discovery("nvidia-smi", (), note="nvidia-smi reports no GPUs")


# ---------------------------------------------------------------- nvidia-smi: MIG, vouching


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX shell")
def test_query_nvidia_smi_mig_column_and_its_absence(tmp_path: Path) -> None:
    apps = f'  --query-compute-apps=*) cat "{DATA}/nvidia-smi-apps-mig.csv" ;;\n'
    body = 'case "$1" in\n' + _smi_gpus_arm("nvidia-smi-gpus-mig.csv", "Enabled") + apps + "esac\n"
    found = gpus.query_nvidia_smi(path=_fake_smi(tmp_path, body))
    assert [(g.index, g.mig, g.utilization_pct) for g in found.gpus] == [
        (0, True, None),
        (1, True, None),
    ]
    assert booking.free_gpus(found, {}, GpuPolicy()) == []

    # a driver before R450 does not know the field: ask again without it
    old = tmp_path / "old"
    old.mkdir()
    body = (
        'case "$1" in\n'
        "  *mig.mode.current*) echo 'Field \"mig.mode.current\" is not a valid field to query.'; "
        "exit 2 ;;\n"
        f'  --query-gpu=*) cat "{DATA}/nvidia-smi-gpus-mig.csv" ;;\n' + apps + "esac\n"
    )
    found = gpus.query_nvidia_smi(path=_fake_smi(old, body))
    assert found.source == "nvidia-smi"
    assert [g.mig for g in found.gpus] == [False, False]  # unknown: judged by memory, processes


def test_parse_smi_mig_column_and_unreadable_memory() -> None:
    text = (
        "0, GPU-a, NVIDIA A100-PCIE-40GB, [Insufficient Permissions], "
        "[Insufficient Permissions], [N/A], Enabled\n"
        "1, GPU-b, Odd, Name, 0, 40960, 3, [N/A]\n"
    )
    first, second = smi.parse_gpus(text, mig_column=True)
    assert (first.mig, first.error, first.memory_used_mib) == (
        True,
        "memory use: Insufficient Permissions",
        0,
    )
    assert (second.name, second.mig, second.error, second.utilization_pct) == (
        "Odd, Name",
        False,
        None,
        3,
    )
    # a 6-column line read as 7 (a name with a comma) is caught, not misread
    with pytest.raises(ValueError, match=r"mig\.mode\.current is '3'"):
        smi.parse_gpus("1, GPU-b, Odd, Name, 0, 40960, 3\n", mig_column=True)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX shell")
def test_query_nvidia_smi_names_only_processes_proc_vouches_for(tmp_path: Path) -> None:
    import pwd

    gone = nvml.PID_MAX_LIMIT - 1  # a possible pid, but above any pid_max but the largest
    (tmp_path / "apps.csv").write_text(
        f"GPU-b7e2c9a4-1d3f-4e6a-8b5c-7f9d2e4a6c13, {os.getpid()}, 700, /opt/py/bin/python3.11\n"
        f"GPU-b7e2c9a4-1d3f-4e6a-8b5c-7f9d2e4a6c13, {gone}, 900, /usr/bin/python3\n"
    )
    body = (
        'case "$1" in\n'
        + _smi_gpus_arm("nvidia-smi-gpus-a100x8.csv")
        + f'  --query-compute-apps=*) cat "{tmp_path}/apps.csv" ;;\n'
        + "esac\n"
    )
    found = gpus.query_nvidia_smi(path=_fake_smi(tmp_path, body))
    me, missing = found.gpus[1].processes
    if pidinfo.host_pid_namespace():
        # the driver's pid is ours: the user from /proc, nvidia-smi's path made short
        assert me == GpuProcess(os.getpid(), 700, pwd.getpwuid(os.getuid()).pw_name, "python3.11")
        assert found.pids_comparable
    else:
        # in a container this test process holds no NVIDIA device: /proc cannot vouch
        assert me == GpuProcess(os.getpid(), 700, None, None)
        assert not found.pids_comparable
    assert missing == GpuProcess(gone, 900, None, None)  # never a guessed user


# ---------------------------------------------------------------- NVML: the stand-in driver

FAKE_NVML = REPO / "tests" / "fake_nvml"
A100 = "NVIDIA A100-SXM4-80GB"


@dataclass
class Driver:
    """The stand-in `pynvml` loaded in this process, and the scenario file that drives it."""

    path: Path
    log_path: Path
    module: Any
    env: dict[str, str]

    def set(self, **scenario: Any) -> None:
        """Write the scenario (what the driver does from now on)."""
        self.path.write_text(json.dumps(scenario), encoding="utf-8")

    def calls(self, symbol: str | None = None) -> list[str]:
        """The C calls made so far, or only those of ``symbol`` (any device)."""
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [c for c in lines if symbol is None or c.split()[0] == symbol]

    def discover(self, timeout_s: float = 5.0) -> Discovery:
        """``gpus.discover`` against this driver, nvidia-smi out of reach unless on env PATH."""
        return gpus.discover(self.env, timeout_s=timeout_s)


def _gpu_spec(index: int, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "uuid": f"GPU-00000000-0000-4000-8000-00000000000{index}",
        "name": A100,
        "total_mib": 81920,
        "used_mib": 3,
        "reserved_mib": 519,
        "util": 0,
        "mig": False,
        "processes": [],
    }
    spec.update(extra)
    return spec


@pytest.fixture
def driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Driver]:
    """A fresh stand-in `pynvml` as ``sys.modules["pynvml"]``, with an empty scenario."""
    scenario = tmp_path / "nvml.json"
    scenario.write_text(json.dumps({"gpus": []}), encoding="utf-8")
    log = tmp_path / "nvml.log"
    monkeypatch.setenv("HANDYJOBS_TEST_NVML", str(scenario))
    monkeypatch.setenv("HANDYJOBS_TEST_NVML_LOG", str(log))
    spec = importlib.util.spec_from_file_location("pynvml", FAKE_NVML / "pynvml.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    empty = tmp_path / "no-smi"
    empty.mkdir()
    box = Driver(scenario, log, module, {"PATH": str(empty)})
    yield box
    # end any hang the test left, so that no thread of it reads the next test's driver
    scenario.write_text(json.dumps({"gpus": []}), encoding="utf-8")
    wait_until(lambda: not nvml.pending(), 10, what="NVML calls of the test to return")


def _me() -> dict[str, Any]:
    """This test process as a GPU process of the stand-in driver."""
    return {"pid": os.getpid(), "used_mib": 700}


host_only = pytest.mark.skipif(
    not pidinfo.host_pid_namespace(), reason="needs the host pid namespace (this is a container)"
)


def test_stand_in_has_the_real_bindings_errors(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "pynvml")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p) != FAKE_NVML])
    real = importlib.import_module("pynvml")
    fake = driver.module
    assert real.__file__ is not None and Path(real.__file__).parent != FAKE_NVML
    names = {n for n in dir(fake) if n.startswith("NVMLError")}
    assert len(names) > 25
    for name in names:
        real_cls, fake_cls = getattr(real, name), getattr(fake, name)
        assert [c.__name__ for c in real_cls.__mro__] == [c.__name__ for c in fake_cls.__mro__]
        if name != "NVMLError":
            assert real_cls().value == fake_cls().value
            assert type(real.NVMLError(real_cls().value)).__name__ == name
            assert type(fake.NVMLError(fake_cls().value)).__name__ == name
    assert real.NVMLLibraryMismatchError.__mro__[1] is Exception
    assert fake.NVMLLibraryMismatchError.__mro__[1] is Exception

    # Both against a driver library that has none of the functions asked for: the real
    # binding's unversioned call raises NVMLLibraryMismatchError, the versioned ones
    # NVMLError_FunctionNotFound. (An empty object stands in for libnvidia-ml.so.)
    monkeypatch.setattr(real, "nvmlLib", object())
    monkeypatch.setattr(real, "_nvmlGetFunctionPointer_cache", {})
    driver.set(
        gpus=[_gpu_spec(0)],
        missing=["nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetMemoryInfo_v2"],
    )
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    for module, h in ((real, None), (fake, handle)):
        with pytest.raises(module.NVMLLibraryMismatchError):
            module.nvmlDeviceGetComputeRunningProcesses(h)
        with pytest.raises(module.NVMLError_FunctionNotFound):
            module.nvmlDeviceGetComputeRunningProcesses_v3(h)
        with pytest.raises(module.NVMLError_FunctionNotFound):
            module.nvmlDeviceGetMemoryInfo(h, version=module.nvmlMemory_v2)
    fake.nvmlShutdown()


@host_only
def test_nvml_reads_gpus_processes_and_memory_without_the_reservation(driver: Driver) -> None:
    import pwd

    driver.set(
        gpus=[
            _gpu_spec(0, reserved_mib=1100),  # idle; v1 would say 1103 MiB used
            _gpu_spec(1, used_mib=710, util=37, processes=[_me()]),
        ],
        process_names={str(os.getpid()): "/opt/py/bin/python3.11"},
    )
    found = driver.discover()
    assert (found.source, found.note, found.pids_comparable) == ("nvml", None, True)
    idle, busy = found.gpus
    assert (idle.uuid, idle.name, idle.memory_used_mib, idle.memory_total_mib) == (
        "GPU-00000000-0000-4000-8000-000000000000",
        A100,
        3,
        81920,
    )
    assert (idle.mig, idle.error, idle.processes) == (False, None, ())
    user = pwd.getpwuid(os.getuid()).pw_name
    comm = Path("/proc/self/comm").read_text().strip()
    assert busy.processes == (GpuProcess(os.getpid(), 700, user, comm),)
    assert busy.utilization_pct == 37
    assert booking.free_gpus(found, {}, GpuPolicy()) == [0]
    assert driver.calls("nvmlDeviceGetMemoryInfo") == []  # v1 never asked: v2 answered
    assert len(driver.calls("nvmlDeviceGetMemoryInfo_v2")) == 2


def test_nvml_memory_v1_where_the_driver_or_binding_has_no_v2(
    driver: Driver, tmp_path: Path
) -> None:
    gpu = _gpu_spec(0, reserved_mib=1100)
    driver.set(gpus=[gpu, _gpu_spec(1)], missing=["nvmlDeviceGetMemoryInfo_v2"])
    found = driver.discover()
    # a driver before R510 has no _v2; v1 then counts the reservation, as that driver's
    # nvidia-smi does
    assert [g.memory_used_mib for g in found.gpus] == [1103, 522]
    assert all(g.error is None for g in found.gpus)
    assert booking.free_gpus(found, {}, GpuPolicy()) == [1]
    # learnt once per look: the second GPU was not asked for _v2 again
    assert len(driver.calls("nvmlDeviceGetMemoryInfo_v2")) <= 2

    # an older nvidia-ml-py (no nvmlMemory_v2, no version argument): v1 without trying v2
    driver.set(gpus=[gpu], binding_lacks=["nvmlMemory_v2"])
    driver.module = importlib.util.module_from_spec(driver.module.__spec__)
    driver.module.__spec__.loader.exec_module(driver.module)
    sys.modules["pynvml"] = driver.module
    driver.log_path.unlink()
    assert [g.memory_used_mib for g in driver.discover().gpus] == [1103]
    assert driver.calls("nvmlDeviceGetMemoryInfo_v2") == []


def test_nvml_driver_without_v3_falls_back_to_v2(driver: Driver) -> None:
    driver.set(
        gpus=[_gpu_spec(0, processes=[{"pid": 4194303, "used_mib": 5000}])],
        missing=["nvmlDeviceGetComputeRunningProcesses_v3"],
        driver="470.57.02",
    )
    found = driver.discover()
    assert found.source == "nvml"
    (gpu,) = found.gpus
    assert gpu.error is None
    assert [(p.pid, p.used_memory_mib) for p in gpu.processes] == [(4194303, 5000)]
    assert gpu.processes[0].user is None  # no such process here: nobody to name
    # _v3 is not in this driver (the log has calls that reached it): _v2 answered
    assert [c.split()[0] for c in driver.calls() if "Processes" in c] == [
        "nvmlDeviceGetComputeRunningProcesses_v2",
    ]
    # the same driver with the binding's own unversioned call would have raised
    # NVMLLibraryMismatchError (see test_stand_in_has_the_real_bindings_errors)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX shell")
def test_nvml_without_any_process_function_uses_nvidia_smi(driver: Driver, tmp_path: Path) -> None:
    driver.set(
        gpus=[_gpu_spec(0)],
        missing=[
            "nvmlDeviceGetComputeRunningProcesses_v3",
            "nvmlDeviceGetComputeRunningProcesses_v2",
        ],
    )
    # no nvidia-smi either: NVML's answer, with the GPU unreadable (it may be busy)
    found = driver.discover()
    assert found.source == "nvml"
    assert found.gpus[0].error is not None
    assert "nvmlDeviceGetComputeRunningProcesses" in found.gpus[0].error
    assert booking.free_gpus(found, {}, GpuPolicy()) == []

    body = (
        'case "$1" in\n'
        + _smi_gpus_arm("nvidia-smi-gpus-util-na.csv")
        + f'  --query-compute-apps=*) cat "{DATA}/nvidia-smi-apps-util-na.csv" ;;\n'
        + "esac\n"
    )
    driver.env["PATH"] = _fake_smi(tmp_path, body)
    found = driver.discover()
    assert found.source == "nvidia-smi"
    assert found.note is not None and "used nvidia-smi" in found.note
    assert [g.index for g in found.gpus] == [0, 1]


def test_nvml_scrambled_pids_are_dropped_or_read_through_an_older_version(
    driver: Driver,
) -> None:
    procs = [{"pid": 4194301, "used_mib": 300}, {"pid": 4194302, "used_mib": 400}]
    driver.set(
        gpus=[_gpu_spec(0, used_mib=700, processes=procs)],
        scramble=["nvmlDeviceGetComputeRunningProcesses_v3"],
    )
    found = driver.discover()
    assert [p.pid for p in found.gpus[0].processes] == [4194301, 4194302]  # through _v2
    assert found.note is None

    driver.set(
        gpus=[_gpu_spec(0, used_mib=700, processes=procs)],
        scramble=[
            "nvmlDeviceGetComputeRunningProcesses_v3",
            "nvmlDeviceGetComputeRunningProcesses_v2",
        ],
    )
    found = driver.discover()
    # no version answers sensibly: the phantom processes are dropped, the memory still counts
    assert found.gpus[0].processes == ()
    assert found.note is not None
    assert "dropped impossible pids 0, 4294967295" in found.note
    assert booking.free_gpus(found, {}, GpuPolicy()) == [0]  # 700 MiB < 1024 MiB
    assert booking.free_gpus(found, {}, GpuPolicy(threshold_mib=500)) == []


def test_nvml_mig_no_permission_stays_with_its_gpu(driver: Driver) -> None:
    no_permission = {
        "nvmlDeviceGetMemoryInfo_v2": "NoPermission",
        "nvmlDeviceGetMemoryInfo": "NoPermission",
    }
    driver.set(
        gpus=[
            _gpu_spec(0, mig=True, errors=no_permission),
            _gpu_spec(1),
            {k: v for k, v in _gpu_spec(2).items() if k != "mig"},  # a GPU that has no MIG
        ]
    )
    found = driver.discover()
    assert found.source == "nvml"
    mig, plain, old = found.gpus
    assert (mig.mig, mig.error, mig.utilization_pct) == (
        True,
        "memory use: Insufficient Permissions",
        None,
    )
    assert (plain.mig, plain.error, old.mig, old.error) == (False, None, False, None)
    assert booking.free_gpus(found, {}, GpuPolicy()) == [1, 2]
    why = booking.blocker(mig, 1024)
    assert why is not None


def test_nvml_a_gpu_that_does_not_answer(driver: Driver, tmp_path: Path) -> None:
    hang = "nvmlDeviceGetComputeRunningProcesses_v3"
    driver.set(gpus=[_gpu_spec(0), _gpu_spec(1, hang=[hang]), _gpu_spec(2)])
    # the deadline leaves a loaded machine time for the GPUs that do answer
    found = driver.discover(timeout_s=2)  # returns, though GPU 1 never does
    assert found.source == "nvml"
    assert found.note is not None
    assert f"GPU 1 ({hang})" in found.note and "2 s" in found.note
    zero, one, two = found.gpus
    assert one.error == f"NVML did not answer {hang} within 2 s"
    assert (one.uuid, one.name) == ("GPU-00000000-0000-4000-8000-000000000001", A100)
    assert zero.error is None and two.error is None
    assert booking.free_gpus(found, {}, GpuPolicy()) == [0, 2]
    assert nvml.pending() == {"gpu 1": hang}

    # a second look does not pile another thread onto the same GPU
    again = driver.discover(timeout_s=2)
    assert again.gpus[1].error is not None
    assert f"NVML has not answered {hang} for" in again.gpus[1].error
    assert len([c for c in driver.calls(hang) if c.endswith(" 1")]) == 1
    assert booking.free_gpus(again, {}, GpuPolicy()) == [0, 2]

    driver.set(gpus=[_gpu_spec(0), _gpu_spec(1), _gpu_spec(2)])  # the driver recovers
    wait_until(lambda: not nvml.pending(), 10, what="the stuck call to return")
    assert booking.free_gpus(driver.discover(), {}, GpuPolicy()) == [0, 1, 2]


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX shell")
def test_nvml_init_that_does_not_answer_skips_nvidia_smi(driver: Driver, tmp_path: Path) -> None:
    asked = tmp_path / "smi-was-run"
    driver.env["PATH"] = _fake_smi(tmp_path, f'touch "{asked}"\nexit 9\n')
    driver.set(gpus=[_gpu_spec(0)], hang=["nvmlInitWithFlags"])
    found = driver.discover(timeout_s=1)
    assert (found.source, found.gpus) == ("none", ())
    assert found.note is not None and "NVML did not answer nvmlInit within 1 s" in found.note
    again = driver.discover(timeout_s=1)
    assert again.note is not None and "NVML has not answered nvmlInit for" in again.note
    assert not asked.exists()  # it would ask the same wedged driver
    assert len(driver.calls("nvmlInitWithFlags")) == 1


def test_nvml_errors_at_start_become_notes(driver: Driver) -> None:
    driver.set(gpus=[_gpu_spec(0)], errors={"nvmlInitWithFlags": "DriverNotLoaded"})
    found = driver.discover()
    assert found == Discovery(
        "none", (), note="the NVIDIA driver is not loaded and no nvidia-smi on PATH"
    )
    driver.set(gpus=[_gpu_spec(0)], errors={"nvmlDeviceGetCount_v2": "Unknown"})
    assert driver.discover().note == "NVML failed (Unknown Error) and no nvidia-smi on PATH"
    driver.set(gpus=[])
    assert driver.discover() == Discovery("nvml", (), note="the NVIDIA driver reports no GPUs")
    driver.set(gpus=[_gpu_spec(0, errors={"nvmlDeviceGetHandleByIndex_v2": "GpuIsLost"})])
    (lost,) = driver.discover().gpus
    assert lost.error == "cannot open it: GPU is lost"


def test_watch_starts_nvml_once_and_sees_changes(driver: Driver) -> None:
    driver.set(gpus=[_gpu_spec(0, used_mib=5000, processes=[{"pid": 4194303, "used_mib": 4990}])])
    with gpus.watch(driver.env) as looking:
        first = looking.discover()
        driver.set(gpus=[_gpu_spec(0)])  # the job ended
        second = looking.discover()
        third = looking.discover()
        assert driver.calls("nvmlShutdown") == []
    assert [len(d.gpus[0].processes) for d in (first, second, third)] == [1, 0, 0]
    assert len(driver.calls("nvmlInitWithFlags")) == 1
    assert len(driver.calls("nvmlShutdown")) == 1

    driver.discover()
    driver.discover()  # a plain discover starts and stops NVML each time
    assert len(driver.calls("nvmlInitWithFlags")) == 3
    assert len(driver.calls("nvmlShutdown")) == 3


def test_watch_reads_the_fake_file_afresh(tmp_path: Path) -> None:
    fake = tmp_path / "gpus.json"
    _write_fake(fake, [_fake_gpu(0, memory_used_mib=9000)])
    with gpus.watch({gpus.FAKE_ENV: str(fake)}) as looking:
        assert looking.discover().gpus[0].memory_used_mib == 9000
        _write_fake(fake, [_fake_gpu(0)])
        assert looking.discover().gpus[0].memory_used_mib == 3


@pytest.mark.parametrize("text", ["0", "-1", "soon", "nan", "inf"])
def test_timeout_from_env_rejects_nonsense(text: str) -> None:
    with pytest.raises(UsageError, match=f"HANDYJOBS_GPU_TIMEOUT_S='{text}' is not a positive"):
        gpus.timeout_from_env({gpus.TIMEOUT_ENV: text})


def test_timeout_from_env() -> None:
    assert gpus.timeout_from_env({}) == gpus.DEFAULT_TIMEOUT_S == 5.0
    assert gpus.timeout_from_env({gpus.TIMEOUT_ENV: " 0.25 "}) == 0.25


def test_discover_takes_its_timeout_from_env(driver: Driver) -> None:
    driver.set(gpus=[_gpu_spec(0, hang=["nvmlDeviceGetUUID"])])
    found = gpus.discover({**driver.env, gpus.TIMEOUT_ENV: "1.5"})
    assert found.gpus[0].error == "NVML did not answer nvmlDeviceGetUUID within 1.5 s"
    assert found.gpus[0].uuid == ""  # not read yet


# --------------------------------------------------------------------------- containers


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_vouch_refuses_a_pid_that_started_after_the_driver_answered() -> None:
    asked = nvml.boot_clock()
    assert asked is not None
    # a process that starts in a later clock tick than the driver's answer is a reused pid
    wait_until(lambda: (nvml.boot_clock() or 0) > asked + 0.05, 5, 0.01, what="the clock")
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        assert not pidinfo.vouch(child.pid, asked, host=True)
        assert pidinfo.vouch(child.pid, nvml.boot_clock(), host=True)
        # outside the host namespace a process must hold an NVIDIA device: this one does not
        assert not pidinfo.vouch(child.pid, nvml.boot_clock(), host=False)
    finally:
        child.communicate(b"")
    assert not pidinfo.vouch(nvml.PID_MAX_LIMIT - 1, None, host=True)


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


CONTAINER_PROBE = """
import json, os
from handyjobs.gpus import discovery as gpus, pidinfo
found = gpus.discover({"PATH": ""})
print(json.dumps({"host": pidinfo.host_pid_namespace(), "me": os.getpid(), **found.to_dict()}))
"""


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare(1) for a pid namespace")
def test_in_a_pid_namespace_driver_pids_get_no_user_and_are_not_comparable(
    tmp_path: Path,
) -> None:
    # The driver reports host pids (as before R5xx): this test process's pid, which inside
    # the new namespace is nobody or someone else, and pid 1, which there is the probe itself.
    scenario = tmp_path / "nvml.json"
    host_pid = os.getpid()
    scenario.write_text(
        json.dumps(
            {
                "gpus": [
                    _gpu_spec(
                        0,
                        used_mib=1400,
                        processes=[{"pid": host_pid, "used_mib": 700}, {"pid": 1, "used_mib": 700}],
                    )
                ],
                "process_names": {"1": "/usr/bin/python3", str(host_pid): "/usr/bin/python3"},
            }
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(FAKE_NVML), str(Path(gpus.__file__).parent.parent)]),
        "HANDYJOBS_TEST_NVML": str(scenario),
    }
    env.pop(gpus.FAKE_ENV, None)
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", CONTAINER_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["host"], doc["me"], doc["source"]) == (False, 1, "nvml")
    assert doc["pids_comparable"] is False
    assert doc["gpus"][0]["processes"] == [
        {"pid": host_pid, "used_memory_mib": 700, "user": None, "name": None},
        {"pid": 1, "used_memory_mib": 700, "user": None, "name": None},
    ]


# --------------------------------------------------------------------------- after a job


def _look(*gpu_list: GpuInfo, comparable: bool = True) -> Discovery:
    return Discovery("nvml", tuple(gpu_list), pids_comparable=comparable)


def test_leftovers_by_pid_where_pids_are_ours() -> None:
    before = _look(_gpu(0, used=3), _gpu(1, used=3, procs=(ALICE,)))
    job = GpuProcess(777, 900)
    now = _look(_gpu(0, used=903, procs=(job,)), _gpu(1, used=3, procs=(ALICE,)))
    assert gpus.leftovers(before, now, [0, 1], {777, 778}) == [gpus.Leftover(0, (777,), 900)]
    released = _look(_gpu(0, used=60), _gpu(1, used=5000, procs=(ALICE,)))
    assert gpus.leftovers(before, released, [0], {777}) == []  # 57 MiB: within the slack
    # without a look from before, only the pids tell
    assert gpus.leftovers(None, now, [0], {777}) == [gpus.Leftover(0, (777,), 0)]
    assert gpus.leftovers(None, now, [0], {5}) == []


def test_leftovers_where_driver_pids_are_the_hosts() -> None:
    before = _look(_gpu(0, used=3, procs=(ALICE,)), comparable=False)
    # the job's pid is 31 here, but the driver lists the host's 90311 for it
    now = _look(_gpu(0, used=3, procs=(ALICE, GpuProcess(90311, 500))), comparable=False)
    assert gpus.leftovers(before, now, [0], {31}) == [gpus.Leftover(0, (90311,), 0)]
    gone = _look(_gpu(0, used=3, procs=(ALICE,)), comparable=False)
    assert gpus.leftovers(before, gone, [0], {31}) == []
    # memory that was not given back counts even where no process is listed at all
    hidden = _look(_gpu(0, used=800, procs=(ALICE,)), comparable=False)
    assert gpus.leftovers(before, hidden, [0], {31}) == [gpus.Leftover(0, (), 797)]


# ---------------------------------------------------------------- the CLI through the stand-in


def _cli_env(scenario: Path, **extra: str) -> dict[str, str]:
    """Environment for `python -m handyjobs` to load the stand-in driver (as a user's would)."""
    return {
        "PYTHONPATH": str(FAKE_NVML),
        "HANDYJOBS_TEST_NVML": str(scenario),
        **extra,
    }


def test_cli_gpus_json_through_the_stand_in(sandbox: Sandbox, tmp_path: Path) -> None:
    scenario = tmp_path / "nvml.json"
    no_permission = {"nvmlDeviceGetMemoryInfo_v2": "NoPermission"}
    scenario.write_text(
        json.dumps(
            {
                "driver": "470.57.02",
                "missing": ["nvmlDeviceGetComputeRunningProcesses_v3"],
                "gpus": [
                    _gpu_spec(0, mig=True, errors=no_permission),
                    _gpu_spec(1, reserved_mib=1100),
                    _gpu_spec(2, used_mib=710, processes=[_me()]),
                ],
            }
        )
    )
    done = sandbox.cli("gpus", "--json", env=_cli_env(scenario), check=True)
    doc = json.loads(done.stdout)
    assert (doc["source"], doc["note"]) == ("nvml", None)
    mig, idle, busy = doc["gpus"]
    assert (mig["mig"], mig["error"], mig["job"]) == (
        True,
        "memory use: Insufficient Permissions",
        None,
    )
    assert (idle["memory_used_mib"], idle["error"], idle["processes"]) == (3, None, [])
    (proc,) = busy["processes"]
    assert (proc["pid"], proc["used_memory_mib"]) == (os.getpid(), 700)
    if pidinfo.host_pid_namespace():
        assert doc["pids_comparable"] is True
        assert proc["user"] is not None and proc["name"] is not None
    table = sandbox.cli("gpus", env=_cli_env(scenario), check=True).stdout
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["GPU", "NAME"]
    # Three GPU rows, then what went wrong on one of them, said under the table.
    assert [line.split()[0] for line in lines[1:4]] == ["0", "1", "2"]
    assert "[MIG]" in lines[1] and "unknown" in lines[1]
    assert lines[4:] == ["GPU 0: memory use: Insufficient Permissions"]


def test_cli_gpus_returns_while_a_gpu_hangs(sandbox: Sandbox, tmp_path: Path) -> None:
    scenario = tmp_path / "nvml.json"
    hang = "nvmlDeviceGetMemoryInfo_v2"
    scenario.write_text(json.dumps({"gpus": [_gpu_spec(0), _gpu_spec(1, hang=[hang])]}))
    env = _cli_env(scenario, HANDYJOBS_GPU_TIMEOUT_S="2")
    done = sandbox.cli("gpus", "--json", env=env, timeout=60, check=True)
    doc = json.loads(done.stdout)
    assert doc["note"] == (
        f"NVML did not answer for GPU 1 ({hang}) within 2 s (the driver may be wedged); "
        "those GPUs count as busy"
    )
    assert [g["error"] for g in doc["gpus"]] == [None, f"NVML did not answer {hang} within 2 s"]
    bad = sandbox.cli("gpus", env={**env, "HANDYJOBS_GPU_TIMEOUT_S": "never"})
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith(
        "HANDYJOBS_GPU_TIMEOUT_S='never' is not a positive number of seconds; "
        "set it to e.g. 5 or unset it"
    )


def test_import_is_cheap() -> None:
    code = (
        "import sys, handyjobs.gpus.discovery; "
        "print(sorted(m for m in ('torch', 'pynvml', 'handyjobs.gpus.nvml') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


#: How far NVML's and nvidia-smi's used memory may differ (MiB): the two are separate looks a
#: moment apart. v1 memory, which counts the driver's reservation, is hundreds of MiB above.
USED_TOLERANCE_MIB = 64


@pytest.mark.gpu
def test_nvml_and_nvidia_smi_agree() -> None:
    env = {k: v for k, v in os.environ.items() if k != gpus.FAKE_ENV}
    found = gpus.discover(env)
    if not found.gpus:
        pytest.skip(f"no NVIDIA GPU visible ({found.note})")
    nvml_found = found  # discover asks NVML first
    smi = gpus.query_nvidia_smi()
    if nvml_found.source != "nvml" or smi.source != "nvidia-smi":
        pytest.skip(f"needs both NVML ({nvml_found.note}) and nvidia-smi ({smi.note})")
    assert [(g.index, g.uuid, g.name, g.mig) for g in nvml_found.gpus] == [
        (g.index, g.uuid, g.name, g.mig) for g in smi.gpus
    ]
    assert [g.memory_total_mib for g in nvml_found.gpus] == [g.memory_total_mib for g in smi.gpus]
    for ours, theirs in zip(nvml_found.gpus, smi.gpus, strict=True):
        if ours.mig:
            continue  # a MIG parent may refuse a non-root caller its memory, in both
        assert (ours.error, theirs.error) == (None, None)
        assert abs(ours.memory_used_mib - theirs.memory_used_mib) <= USED_TOLERANCE_MIB, (
            f"GPU {ours.index}: NVML says {ours.memory_used_mib} MiB used, "
            f"nvidia-smi {theirs.memory_used_mib} MiB"
        )


@pytest.mark.skipif(
    any(os.path.exists(node) for node in nvml.DRIVER_NODES), reason="a driver's node is here"
)
def test_no_driver_node_says_so_without_loading_the_binding(tmp_path: Path) -> None:
    """With no /dev/nvidiactl (nor WSL2's /dev/dxg) NVML has no driver to talk to: discovery
    says so without importing nvidia-ml-py, whose import (ctypes.util with it) cost `gpus` a
    fifth of its start on a machine with no GPU."""
    env = {k: v for k, v in os.environ.items() if k not in (gpus.FAKE_ENV, nvml.STAND_IN_ENV)}
    env["PATH"] = str(tmp_path)  # no nvidia-smi either
    code = (
        "import sys\nfrom handyjobs.gpus import discovery\n"
        "print(discovery.discover().note)\nprint('pynvml' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    note, loaded = done.stdout.splitlines()
    assert note == "no NVIDIA driver (no /dev/nvidiactl) and no nvidia-smi on PATH", note
    assert loaded == "False"
