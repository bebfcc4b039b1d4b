"""``show``: one job's fields, one a line, with what its run cost and its metrics' last and best."""

from __future__ import annotations

from collections.abc import Sequence

from handyjobs import backends
from handyjobs.core.records import Cost, GpuUse, JobRecord, JobState, exit_summary
from handyjobs.views import render
from handyjobs.views.curves import Summary


def _containment_text(kind: str | None) -> str:
    """How ``stop`` and the runner find the run's processes."""
    if kind is None:
        return "-"
    if kind == "marker":
        return "marker (HANDYJOBS_RUN_ID; no cgroup could be had here)"
    return f"{kind} (every process the job starts, whatever its environment)"


def record_fields(record: JobRecord) -> list[tuple[str, str]]:
    """``show``'s key/value lines."""
    run, spec = record.current, record.spec
    git = record.git or {}
    log = record.log_path + (f" (not all written: {run.log_error})" if run.log_error else "")
    fields = [
        ("name", record.name),
        ("state", render.state_text(record)),
        ("exit", exit_summary(run) or "-"),
        *_failure_fields(record),
        ("command", render.printable(spec.command)),
        ("cwd", spec.cwd),
        ("python", spec.python),
        ("gpus", render.gpu_text(record)),
        ("nproc", str(run.nproc)),
        *_nodes_fields(record),
        ("rendezvous", run.rendezvous or "-"),
        *_backend_fields(record),
        ("pids", " ".join(f"{k}={v}" for k, v in sorted(run.pids.items())) or "-"),
        ("containment", _containment_text(run.containment)),
        ("leftovers", f"{run.leftovers} ended after the main process" if run.leftovers else "-"),
        *(cost_fields(run.cost) if run.cost is not None else []),
        ("created", record.created_at),
        ("started", run.started_at or "-"),
        ("ended", run.ended_at or "-"),
        ("duration", render.duration(record.duration_s()) or "-"),
        ("log", log),
        (
            "git",
            f"{git.get('commit', '')[:12]}{' (dirty)' if git.get('dirty') else ''}" if git else "-",
        ),
        ("env", " ".join(f"{k}=..." for k, _ in spec.env) or "-"),
        ("group", spec.group or "-"),
        ("params", render.printable(" ".join(f"{k}={v}" for k, v in spec.params)) or "-"),
        ("after", ", ".join(spec.after) + (" (any outcome)" if spec.after_any else "") or "-"),
        ("priority", str(spec.priority)),
        (
            "restarts",
            "-"
            if spec.max_restarts is None
            else f"{run.cost.restarts if run.cost else 0} of at most {spec.max_restarts} "
            "(torchrun's elastic restarts)",
        ),
        ("on exit", render.printable(" ".join(spec.on_exit)) or "-"),
        ("runs", str(len(record.runs))),
    ]
    for old in record.runs[:-1]:
        fields.append(
            (
                f"  run {old.run}",
                f"{old.state.value} {exit_summary(old)} "
                f"{old.started_at or old.created_at} -> {old.ended_at or '-'}"
                + (f" ({render.reason_text(old.reason)})" if old.reason else ""),
            )
        )
    return fields


def _failure_fields(record: JobRecord) -> list[tuple[str, str]]:
    """A failed job's error as it printed it, and the rank that failed first (torchrun's)."""
    if record.state is not JobState.FAILED or record.current.started_at is None:
        return []
    from handyjobs.views import logview  # lazy: only a failed job's show reads its log

    first, excerpt = logview.failure(record)
    out = []
    if first is not None:
        see = f"`handyjobs logs {record.name} --rank {first}`"
        out.append(("failed first", f"rank {first} (torchrun's first observed failure; {see})"))
    out += [("error" if i == 0 else "", line) for i, line in enumerate(excerpt)]
    return out


def _nodes_fields(record: JobRecord) -> list[tuple[str, str]]:
    rdzv = record.spec.rdzv
    if rdzv is not None:
        host = " (hosts the rendezvous store)" if rdzv.node_rank == 0 else ""
        return [("nodes", f"{rdzv.nnodes}; this is node rank {rdzv.node_rank}{host}")]
    asked = backends.describe(record.current.backend).nnodes(record.spec)
    return [("nodes", str(asked))] if asked is not None else []


def _backend_fields(record: JobRecord) -> list[tuple[str, str]]:
    return backends.describe(record.current.backend).show_fields(record)


def print_record(
    record: JobRecord, metrics: Sequence[Summary] = (), show_secrets: bool = False
) -> None:
    """``show``: one field a line (and the last and best value of each metric); --env values
    only with ``show_secrets``."""
    fields = record_fields(record) + metric_fields(metrics)
    if show_secrets and record.spec.env:
        env = render.printable(" ".join(f"{k}={v}" for k, v in record.spec.env))
        fields = [(k, env if k == "env" else v) for k, v in fields]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        print(f"{key.ljust(width)}  {value}")


def cost_fields(cost: Cost) -> list[tuple[str, str]]:
    """``show``'s lines about what a run used."""
    looks = f"{cost.samples} look{'s' if cost.samples != 1 else ''} {cost.interval_s:g}s apart"
    out = [
        (
            "memory",
            f"peak {render.size(cost.peak_rss_bytes)} together ({looks}), "
            f"largest process {render.size(cost.max_rss_bytes)} at its peak",
        ),
        ("cpu time", render.duration(cost.cpu_time_s)),
    ]
    if cost.nodes:
        out[0] = ("memory", f"{out[0][1]}, each node's peak added")
        each = ", ".join(
            f"{render.printable(n.node)} {render.duration(n.cpu_time_s)}" for n in cost.nodes
        )
        out[1] = (
            "cpu time",
            f"{render.duration(cost.cpu_time_s)} on {len(cost.nodes)} nodes ({each})",
        )
    for g in cost.gpus:
        out.append(_gpu_field(g, ""))
    for n in cost.nodes:
        out += [_gpu_field(g, f"{render.printable(n.node)} ") for g in n.gpus]
    return out


def _gpu_field(g: GpuUse, node: str) -> tuple[str, str]:
    """``show``'s line about one GPU a run used (``node``: the node's name and a space)."""
    util = "" if g.mean_utilization_pct is None else f", {g.mean_utilization_pct:.0f}% mean use"
    return (f"{node}gpu {g.index}", f"peak {g.peak_memory_mib} MiB by the job{util}")


def metric_fields(summaries: Sequence[Summary]) -> list[tuple[str, str]]:
    """``show``'s lines about the job's metrics: last and best value of each, and where one
    stopped being finite (a diverged loss)."""
    out = []
    for s in summaries:
        best = "max" if s.higher_is_better else "min"
        out.append(
            (
                f"metric {render.printable(s.metric)}",
                f"last {render.metric_value(s.last)} (step {s.last_step:g}), "
                f"best {render.metric_value(s.best)} (step {s.best_step:g}, {best})"
                + ("" if s.diverged_step is None else f", diverged at step {s.diverged_step:g}"),
            )
        )
    return out
