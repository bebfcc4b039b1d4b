"""The Slurm backend's job side: what the runner does differently inside a Slurm allocation.

The batch script execs the runner with ``HANDYJOBS_SCHEDULED=slurm``. Slurm grants the run (the
runner does not queue), signals it (``scancel``, preemption, the time limit) and may requeue it:

- SIGTERM from Slurm ends the job: every process of the step got it too; the runner keeps
  copying output until they end and records the end as the scheduler's, whose own state says
  which end it was. A SIGTERM that comes before the job started means: start nothing.
- When the step ends, Slurm is asked whether it still runs the job: a node that fails makes
  srun exit 0 before Slurm's SIGTERM arrives, and that end is the scheduler's too (``lost``).
- SIGUSR1 is the time-limit warning (``--signal=B:USR1@S``): passed on to the step once
  (srun gives it to every task on every node), then every few seconds to each process of the
  job on this node that started handling it since, once each, since Slurm may warn before the
  job's processes listen. Never again to one that had it: a process whose interpreter is
  shutting down has SIGUSR1's default back, and would die of it (exit 138).
- A job that exits 0 after the warning and says it stopped early (``HANDYJOBS_STOPPED_FILE``:
  the trainer writes it when ``should_stop`` turns True) is not done: a ``--requeue`` job asks
  Slurm to requeue it; any other ends ``failed`` with the reason "time limit", as Slurm's
  TIMEOUT would, so jobs ``--after`` it do not start. Exit 0 without that note is done.
- Nobody reads the runner's own output in a batch script: the log has every byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from handyjobs.backends.base import JobControl
from handyjobs.backends.slurm import backend, sbatch, step
from handyjobs.core import procs
from handyjobs.core.records import Cost, JobSpec, JobState, LostKind, NodeCost, Reason, utcnow
from handyjobs.jobside import launch, limits, sampler
from handyjobs.structs import replace

#: Seconds between two looks for processes newly listening for Slurm's time-limit warning.
WARNING_REPEAT_S = 5.0
#: Where the trainer notes that its loop left early at a stop request (kept in sync with
#: handyjobs.trainer.stopping.STOPPED_FILE_ENV; the runner does not import torch's side).
STOPPED_FILE_ENV = "HANDYJOBS_STOPPED_FILE"

# Inside the allocation the runner's own SLURM_* variables describe the job's allocation; the
# caller's (from a shell inside another allocation, say) must not reach srun. SLURM_CONF says
# which cluster, and is the caller's to choose.
_PREFIX, _KEEP = "SLURM_", ("SLURM_CONF",)


class _Early:
    """Slurm's signals that came before the runner was ready for them (it is still starting)."""

    #: Slurm's SIGTERM (scancel, preemption): the job is to end; do not start it.
    term = False
    #: Slurm's time-limit warning (SIGUSR1): passed on once the job runs.
    warned = False


def _on_early(signum: int, frame: FrameType | None) -> None:
    # Slurm signals the batch script as soon as it likes (a stop right after submitting, a
    # warning sent early): remember it; dying of it, or recording "lost", would be wrong.
    if signum == signal.SIGTERM:
        _Early.term = True
    else:
        _Early.warned = True


def early() -> None:
    """The runner's first act under Slurm: remember SIGTERM and SIGUSR1 until it is ready."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, _on_early)


def _pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def _signal_marked(pid: int, start: int, run_id: str, sig: int) -> bool:
    """Signal a process of the step only while it is still the one seen, marked with the run.

    The step's processes are Slurm's children, not in the run's cgroup: the marker is what
    says they are the run's (slurmstepd starts them with the job's environment).
    """
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if procs.start_time(pid) != start or not procs.has_marker(pid, run_id):
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def node_addr(name: str) -> str:
    """The node's address as Slurm knows it (``scontrol show node``), "" when it cannot say."""
    said = _scontrol_show("node", name)
    return "" if said is None else step.parse_node_addr(said)


def _scontrol_show(kind: str, name: str) -> str | None:
    """``scontrol show KIND -o NAME``'s answer, None when Slurm cannot be asked or refuses."""
    try:
        proc = subprocess.run(
            ["scontrol", "show", kind, "-o", name],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def slurm_ended(job_id: str | None) -> str | None:
    """Slurm's state word for the job when Slurm no longer runs it as it was (NODE_FAIL,
    CANCELLED, TIMEOUT, requeued) though its batch script still runs; None while Slurm runs
    it, or when Slurm cannot be asked (the job's own end then stands)."""
    if not job_id:
        return None
    # Asked under the controller's lock on its jobs: a node failure that srun was told of is
    # already the job's state when the answer comes.
    said = _scontrol_show("job", job_id)
    view = None if said is None else backend.parse_scontrol(said)
    if view is None or view.verdict in (JobState.RUNNING, JobState.PAUSED):
        return None
    return view.state


def _from_allocation(key: str) -> bool:
    """True for a ``SLURM_*`` variable that describes the allocation (taken from the step)."""
    return key.startswith(_PREFIX) and key not in _KEEP


def _setup_changes(batch: Mapping[str, str], job: Mapping[str, str]) -> dict[str, str]:
    """What the batch script's ``--setup`` lines changed, made to the job's environment: the
    script saved its environment before them (``env -0``) in the file it names."""
    saved = batch.get(sbatch.SETUP_ENV)
    if not saved:
        return {}
    try:
        raw = Path(saved).read_bytes()
    except OSError:
        return {}  # the job starts without them; its log shows what it lacks
    before = dict(
        os.fsdecode(item).partition("=")[::2] for item in raw.split(b"\0") if b"=" in item
    )
    return step.setup_changes(before, batch, job)


class JobSide:
    """The runner's Slurm half: signals, the srun step, the log header, requeue."""

    #: Slurm grants, signals and requeues the run.
    scheduled = True
    #: The runner's output goes to Slurm's output file, which nobody reads live.
    interactive = False

    def __init__(self) -> None:
        """Nothing is installed until :meth:`take_signals`."""
        self.control: JobControl | None = None
        #: When the time-limit warning came (ISO-8601), or None.
        self.warned_at: str | None = None
        #: Slurm ended the job (SIGTERM): the end is the scheduler's to name.
        self.ended_by_scheduler = False
        #: The run's id: the marker every process of the step carries (known at take_signals).
        self.run_id = ""
        #: Processes of the job on this node that had the warning (pid -> start time).
        self.warned: dict[int, int] = {}
        #: The warning went to the step (srun) once: later looks warn processes one by one.
        self._passed = False
        #: Where the job notes that it left early at the warning (known once it starts).
        self.stopped_file: Path | None = None
        #: The job's folder, where each node writes its measure (known once it starts).
        self.job_dir: Path | None = None

    def take_signals(self, control: JobControl) -> None:
        """Install Slurm's handling, taking over what came while the runner started up."""
        self.control = control
        self.run_id = control.run_id
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGUSR1, self._on_warning)
        self.ended_by_scheduler = self.ended_by_scheduler or _Early.term
        if _Early.warned:
            self._on_warning(signal.SIGUSR1, None)  # passed on by the repeat once the job runs

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        # Every process of the job got the same signal from Slurm: keep copying output until
        # they end, then record how, as ended by the scheduler.
        self.ended_by_scheduler = True

    def _listening(self) -> dict[int, int]:
        """The job's processes on this node that handle SIGUSR1 now (pid -> start time)."""
        main = self.control.main_pid() if self.control else None
        found: dict[int, int] = {}
        if not self.run_id:
            return found
        for pid in _pids():
            if pid in (main, os.getpid()) or not procs.has_marker(pid, self.run_id):
                continue
            start = procs.start_time(pid)
            # A rank wrapper passes it on to a worker that may not handle it: warn the worker.
            handled = start is not None and limits.handles(pid, signal.SIGUSR1)
            if handled and start is not None and not procs.is_rank_wrapper(pid):
                found[pid] = start
        return found

    def _pass_on(self, signum: int, frame: FrameType | None) -> None:
        main = self.control.main_pid() if self.control else None
        if main is None:
            return  # not started yet: the first look after the start passes it on
        if not self._passed:
            self._passed = True
            self.warned.update(self._listening())  # srun gives them this one
            # Our own child, not reaped before the job's end is seen: the pid is still ours.
            # srun passes the signal to every process of the step, on every node.
            with contextlib.suppress(ProcessLookupError):
                os.kill(main, signal.SIGUSR1)
            return
        for pid, start in self._listening().items():
            if self.warned.get(pid) != start and _signal_marked(
                pid, start, self.run_id, signal.SIGUSR1
            ):
                self.warned[pid] = start

    def _on_warning(self, signum: int, frame: FrameType | None) -> None:
        if self.warned_at is None:
            self.warned_at = utcnow()
            # Slurm may warn up to a minute early, before the job's processes listen: look
            # again every few seconds for those that started listening since.
            signal.signal(signal.SIGALRM, self._pass_on)
            signal.setitimer(signal.ITIMER_REAL, WARNING_REPEAT_S, WARNING_REPEAT_S)
        self._pass_on(signum, frame)

    def ended_before_start(self) -> str | None:
        """Why the job is not to start at all (Slurm ended it before it started), or None."""
        return "Slurm ended the job before it started" if self.ended_by_scheduler else None

    def where(self, env: Mapping[str, str]) -> str:
        """Where the run runs, for the log's header: the Slurm job, its nodes, its restart."""
        if "SLURM_JOB_ID" not in env:
            return ""
        restarts = env.get("SLURM_RESTART_COUNT", "0")
        again = f", restart {restarts}" if restarts != "0" else ""
        job = env["SLURM_JOB_ID"]
        if env.get("SLURM_ARRAY_TASK_ID"):  # a sweep's point: named as its handle names it
            job = f"{env.get('SLURM_ARRAY_JOB_ID')}_{env['SLURM_ARRAY_TASK_ID']}"
        return f"Slurm job {job} ({env.get('SLURM_JOB_NODELIST')}{again})"

    def attempt(self, env: Mapping[str, str]) -> int:
        """Slurm's restart count: a job Slurm requeued (preempted, node failure, ``--requeue``)
        runs the same run again."""
        try:
            return int(env.get("SLURM_RESTART_COUNT", "0") or 0)
        except ValueError:
            return 0

    def command(
        self,
        spec: JobSpec,
        ctx: launch.RunContext,
        base_env: Mapping[str, str],
        pane_env: Mapping[str, str],
    ) -> launch.Launch:
        """The srun step, with the allocation's variables and no GPU choice of the login node."""
        alloc = step.Allocation.from_env(pane_env)
        port = ctx.rdzv_port or 29400  # torchrun's default c10d port
        if step.rendezvous(spec, alloc, port) is not None:
            # The nodes meet at the head's address: a node name need not resolve (NodeName=n1).
            alloc = replace(alloc, head_addr=node_addr(alloc.head))
        ctx = launch.RunContext(
            ctx.name,
            ctx.run,
            ctx.run_id,
            ctx.gpus,
            ctx.log_path,
            ctx.job_dir,
            rdzv_port=port,
            rank_python=ctx.rank_python,
            nnodes=alloc.nnodes,
        )
        built = launch.build(spec, ctx, base_env, pane_env)
        env = {k: v for k, v in built.env.items() if not _from_allocation(k)}
        env.update({k: v for k, v in pane_env.items() if _from_allocation(k)})
        env.update({k: v for k, v in spec.env if _from_allocation(k)})
        if not spec.cpu and "CUDA_VISIBLE_DEVICES" not in dict(spec.env):
            # Slurm gives each step the GPUs it allocated; the login node's choice means nothing.
            env.pop("CUDA_VISIBLE_DEVICES", None)
        env.update(_setup_changes(pane_env, env))
        # Tasks write to Slurm's pipes, not a terminal: unbuffered, lines arrive as printed.
        env.setdefault("PYTHONUNBUFFERED", "1")
        # One run id for every start of a requeued run: the note of the start before goes.
        self.job_dir = Path(ctx.job_dir)
        self.stopped_file = self.job_dir / f"stopped-early-{ctx.run_id}"
        self.stopped_file.unlink(missing_ok=True)
        env[STOPPED_FILE_ENV] = str(self.stopped_file)
        argv = step.step_argv(spec, alloc, port, ctx)
        return launch.Launch(argv, env, step.rendezvous(spec, alloc, port))

    def job_ended(self) -> list[str]:
        """Stop repeating the warning; see whether Slurm ended the job; lines for the log."""
        lines = []
        if self.warned_at is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            heard = f"; {len(self.warned)} process(es) here handle it" if self.warned else ""
            lines.append(
                f"Slurm's time-limit warning (SIGUSR1) reached the job {self.warned_at}{heard}"
            )
        ended = None if self.ended_by_scheduler else slurm_ended(os.environ.get("SLURM_JOB_ID"))
        if ended is not None:
            # srun exits 0 the moment Slurm tells it a node failed, before Slurm's SIGTERM
            # reaches this script (measured: 10 ms before it): that 0 is not how the job ended.
            self.ended_by_scheduler = True
            lines.append(f"Slurm ended the job ({ended}): the step's exit is not its outcome")
        return lines

    def cost(self, measured: Cost) -> Cost:
        """The nodes' own measures added up (each start of a requeued run too): the runner
        here sees only the batch step, not the processes Slurm starts on each node."""
        if self.job_dir is None or not self.run_id:
            return measured
        reports = []
        for path in sorted(self.job_dir.glob(f"node-cost-{self.run_id}-*.json")):
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                reports.append(NodeCost.from_dict(json.loads(path.read_text())))
        return sampler.over_nodes(measured, reports)

    def _stopped_early(self, exit_code: int | None) -> bool:
        """The job left cleanly after the warning, and said it left early: its loop saw
        ``should_stop`` (the trainer notes it) or the script wrote the note itself. Without
        the note its exit 0 says its work is done: it succeeded, whenever the warning came."""
        if self.warned_at is None or exit_code != 0 or self.ended_by_scheduler:
            return False
        return self.stopped_file is not None and self.stopped_file.exists()

    def stop_reason(self, exit_code: int | None) -> Reason | None:
        """A job that stopped early at the warning ran out of time, as Slurm's TIMEOUT says."""
        return Reason(LostKind.TIME_LIMIT) if self._stopped_early(exit_code) else None

    def goes_on(self, spec: JobSpec, exit_code: int | None) -> bool:
        """After a clean exit that followed the warning, requeue a ``--requeue`` job.

        True when Slurm took the requeue: the same run starts again, nothing is recorded.
        """
        asked = spec.slurm is not None and spec.slurm.requeue
        if not (asked and self._stopped_early(exit_code)):
            return False
        return self._requeue()

    def _requeue(self) -> bool:
        """Have Slurm requeue the job (same run, started again); False when it refuses."""
        assert self.control is not None
        job_id = os.environ.get("SLURM_JOB_ID", "")
        self.control.record_requeue(True)
        self.control.say(f"asking Slurm to requeue job {job_id}: the same run starts again")
        # Slurm ends this batch script as it requeues the job; nothing is left to do then.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            proc = subprocess.run(
                ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60
            )
            why = proc.stderr.strip() or f"exit code {proc.returncode}"
            ok = proc.returncode == 0
        except (OSError, subprocess.TimeoutExpired) as exc:
            ok, why = False, str(exc)
        if ok:
            return True
        signal.signal(signal.SIGTERM, self._on_term)
        self.control.say(f"Slurm did not requeue the job ({why}); recording how it ended")
        self.control.record_requeue(False)
        return False
