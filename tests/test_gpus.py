"""Tests of handyjobs.gpus: parsers on captured nvidia-smi output, specs, discovery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from handyjobs import booking, gpus
from handyjobs.errors import UsageError
from handyjobs.gpus import Discovery, GpuInfo, GpuProcess
from handyjobs.records import GpuPolicy

DATA = Path(__file__).parent / "data"


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
    parsed = gpus.parse_smi_gpus(_read("nvidia-smi-gpus-a100x8.csv"))
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
    apps = gpus.parse_smi_apps(_read("nvidia-smi-apps-a100x8.csv"))
    gpu3 = apps["GPU-9e8d7c6b-5a4f-3e2d-1c0b-a9f8e7d6c5b4"]
    assert [(p.pid, p.used_memory_mib, p.name) for p in gpu3] == [
        (190877, 20934, "python3"),
        (191002, 624, "/usr/bin/python3.10"),
    ]
    assert sum(len(v) for v in apps.values()) == 4
    assert all(p.user is None for v in apps.values() for p in v)  # pure: no /proc lookups


def test_parse_smi_utilization_na_spaces_and_blank_lines() -> None:
    parsed = gpus.parse_smi_gpus(_read("nvidia-smi-gpus-util-na.csv"))
    assert [
        (g.index, g.memory_used_mib, g.memory_total_mib, g.utilization_pct) for g in parsed
    ] == [
        (0, 1, 24576, None),
        (1, 9877, 24576, 88),
    ]
    apps = gpus.parse_smi_apps(_read("nvidia-smi-apps-util-na.csv"))
    procs = apps["GPU-6c8d0e2f-3a4b-5c6d-7e8f-9a0b1c2d3e4f"]
    assert procs == [
        GpuProcess(52114, None, None, None),  # "[N/A]" memory, "[Not Found]" name
        GpuProcess(52230, 9860, None, "/opt/conda/bin/python"),
    ]


def test_parse_smi_mig_rows() -> None:
    parsed = gpus.parse_smi_gpus(_read("nvidia-smi-gpus-mig.csv"))
    assert [g.utilization_pct for g in parsed] == [None, None]  # "[N/A]", "[Not Supported]"
    apps = gpus.parse_smi_apps(_read("nvidia-smi-apps-mig.csv"))
    assert apps == {
        "GPU-2d4f6a8c-0e1b-3d5f-7a9c-1e3b5d7f9a2c": [GpuProcess(77301, None, None, "python")]
    }


def test_parse_smi_empty_and_no_devices() -> None:
    assert gpus.parse_smi_gpus("") == []
    assert gpus.parse_smi_gpus("No devices were found\n") == []
    assert gpus.parse_smi_apps("\n\n") == {}


def test_parse_smi_name_with_comma_and_process_path_with_comma() -> None:
    (g,) = gpus.parse_smi_gpus("3, GPU-abc, Odd, Name, 10, 100, 5\n")
    assert (g.index, g.name, g.memory_used_mib) == (3, "Odd, Name", 10)
    apps = gpus.parse_smi_apps("GPU-abc, 12, 34, /home/x/a,b/python\n")
    assert apps["GPU-abc"][0].name == "/home/x/a,b/python"


@pytest.mark.parametrize(
    ("parser", "text"),
    [
        (gpus.parse_smi_gpus, "0, GPU-abc, A100, 4\n"),
        (gpus.parse_smi_gpus, "x, GPU-abc, A100, 4, 100, 0\n"),
        (gpus.parse_smi_gpus, "0, GPU-abc, A100, lots, 100, 0\n"),
        (gpus.parse_smi_apps, "GPU-abc, 12\n"),
        (gpus.parse_smi_apps, "GPU-abc, twelve, 3, python\n"),
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
    assert gpus.parse_gpu_spec(text) == tokens


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
        gpus.parse_gpu_spec(text)
    text_of = str(err.value)
    assert message in text_of
    assert "\n" not in text_of
    assert err.value.exit_code == 2


def test_parse_gpu_spec_names_its_source() -> None:
    with pytest.raises(UsageError, match=r"^HANDYJOBS_GPUS '0,x'"):
        gpus.parse_gpu_spec("0,x", source="HANDYJOBS_GPUS")


def test_resolve_gpus_indices_and_uuids() -> None:
    assert gpus.resolve_gpus(["4", "GPU-fake-2"], EIGHT) == [4, 2]
    assert gpus.resolve_gpus(["GPU-FAKE-7"], EIGHT) == [7]  # UUIDs match in any case


def test_resolve_gpus_missing_index_lists_what_exists() -> None:
    with pytest.raises(UsageError) as err:
        gpus.resolve_gpus(["9"], EIGHT)
    assert str(err.value) == (
        "GPU 9 does not exist; this machine has GPUs 0-7 (see `handyjobs gpus`)"
    )


def test_resolve_gpus_several_missing_and_gaps() -> None:
    box = _box(_gpu(0), _gpu(1), _gpu(3))
    with pytest.raises(UsageError) as err:
        gpus.resolve_gpus(["2", "GPU-nope", "1"], box)
    assert str(err.value) == (
        "GPUs 2, GPU-nope do not exist; this machine has GPUs 0-1,3 (see `handyjobs gpus`)"
    )
    with pytest.raises(UsageError, match=r"this machine has GPU 0 \("):
        gpus.resolve_gpus(["1"], _box(_gpu(0)))


def test_resolve_gpus_same_gpu_by_index_and_uuid() -> None:
    with pytest.raises(UsageError, match="GPU 2 is named twice"):
        gpus.resolve_gpus(["2", "GPU-fake-2"], EIGHT)


def test_resolve_gpus_mig_instance() -> None:
    with pytest.raises(UsageError, match="MIG instance"):
        gpus.resolve_gpus(["MIG-1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e"], EIGHT)


def test_resolve_gpus_no_gpus_at_all() -> None:
    none = Discovery("none", (), note="no NVIDIA driver (libnvidia-ml not found)")
    with pytest.raises(UsageError) as err:
        gpus.resolve_gpus(["0"], none)
    assert str(err.value) == (
        "no NVIDIA GPU found (no NVIDIA driver (libnvidia-ml not found)); "
        "use --cpu to run on the CPU"
    )


def test_format_indices() -> None:
    assert gpus.format_indices([]) == ""
    assert gpus.format_indices([3, 0, 1, 2, 5, 7, 6]) == "0-3,5-7"


ALICE = GpuProcess(4242, 5000, "alice", "python")


def test_compute_pids() -> None:
    shared = GpuProcess(100, 10, None, None)
    box = _box(
        _gpu(0, procs=(shared, ALICE)),
        _gpu(1, procs=(shared,)),
        _gpu(2),
    )
    assert gpus.compute_pids(box) == {100: [0, 1], 4242: [0]}


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
    assert booking.choose_free(first, 2, {}, GpuPolicy()) is None

    _write_fake(fake, [_fake_gpu(1), _fake_gpu(0)])  # the job on GPU 1 ended
    second = gpus.discover(env)
    assert booking.choose_free(second, 2, {}, GpuPolicy()) == [0, 1]


def test_discover_fake_round_trips_to_dict(tmp_path: Path) -> None:
    fake = tmp_path / "gpus.json"
    gpu = _fake_gpu(
        3,
        uuid="GPU-4a1d3b58-8f2c-6d1e-9a7b-3c5e2f1d0a91",
        utilization_pct=None,
        processes=[{"pid": 1, "used_memory_mib": None, "user": "root", "name": "init"}],
    )
    _write_fake(fake, [gpu])
    found = gpus.discover({gpus.FAKE_ENV: str(fake)})
    assert found.gpus[0].to_dict() == gpu
    assert found.to_dict() == {"source": "fake", "note": None, "gpus": [gpu]}
    json.dumps(found.to_dict())  # JSON-ready


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
        f'  --query-gpu=*) cat "{DATA}/nvidia-smi-gpus-a100x8.csv" ;;\n'
        f'  --query-compute-apps=*) cat "{DATA}/nvidia-smi-apps-a100x8.csv" ;;\n'
        "  *) echo bad query >&2; exit 2 ;;\n"
        "esac\n"
    )
    found = gpus.query_nvidia_smi(path=_fake_smi(tmp_path, body))
    assert found.source == "nvidia-smi"
    assert [g.index for g in found.gpus] == list(range(8))
    assert [p.pid for p in found.gpus[3].processes] == [190877, 191002]
    # paths become the short name people know
    assert found.gpus[0].processes[0].name == "python"
    assert gpus.compute_pids(found) == {183422: [0], 183423: [1], 190877: [3], 191002: [3]}
    assert booking.choose_free(found, 3, {}, GpuPolicy()) == [2, 4, 6]


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


def test_import_is_cheap() -> None:
    code = (
        "import sys, handyjobs.gpus; "
        "print(sorted(m for m in ('torch', 'pynvml') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.gpu
def test_nvml_and_nvidia_smi_agree() -> None:
    env = {k: v for k, v in os.environ.items() if k != gpus.FAKE_ENV}
    found = gpus.discover(env)
    if not found.gpus:
        pytest.skip(f"no NVIDIA GPU visible ({found.note})")
    nvml = gpus.query_nvml()
    smi = gpus.query_nvidia_smi()
    if nvml.source != "nvml" or smi.source != "nvidia-smi":
        pytest.skip(f"needs both NVML ({nvml.note}) and nvidia-smi ({smi.note})")
    assert [(g.index, g.uuid, g.name) for g in nvml.gpus] == [
        (g.index, g.uuid, g.name) for g in smi.gpus
    ]
    assert [g.memory_total_mib for g in nvml.gpus] == [g.memory_total_mib for g in smi.gpus]
