"""The Slurm backend: ``sbatch`` a script that runs the runner inside the allocation.

The job side is the same runner as on this machine: it starts ``srun`` (one torchrun per
node), tees every byte to the job's log and writes the outcome into the job's folder, which is
on a file system every node shares (``HANDYJOBS_HOME``). This side only submits, asks and
cancels:

- ``launch`` writes ``jobs/NAME/slurm-RUNID.sbatch`` (:mod:`handyjobs.backends.slurm.sbatch`)
  and submits it
  with ``sbatch --parsable``; the run's handle is the Slurm job id. ``launch_group`` submits
  a sweep's runs as one job array (:mod:`handyjobs.backends.slurm.arrays`); a run's handle is
  then its task's name, ``ARRAYID_INDEX``, which every Slurm command below takes.
- ``observe`` gives Slurm's view of a run as data (:class:`ClusterState`): one ``squeue`` call
  lists every job of the user, kept for a moment in memory and in a small file, so ``list``,
  ``wait`` and ``logs -f`` never poll Slurm in a tight loop. A job squeue no longer lists (or
  one that ended without an outcome of its own) is looked up with ``scontrol``, then ``sacct``
  where accounting exists, for its end state and exit code.
- ``terminate`` is ``scancel``: Slurm sends SIGTERM to every process of the job (the runner
  passes it on and records how the job ended), SIGKILL after the grace period if it lingers.
  Several jobs stopped together are one ``scancel`` (``cancel_many``); each ``terminate``
  then only waits for its job, on squeue answers the jobs share.
- When the controller does not answer, squeue is given :data:`ASK_TIMEOUT_S` once for all
  jobs, and the silence is kept (:mod:`handyjobs.backends.slurm.answers`) for ``list`` to say.

Slurm's words are kept as they are (``show`` prints them); :func:`verdict`
(:mod:`handyjobs.backends.slurm.states`) says what each means for the run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from handyjobs.backends.base import Launched, LaunchRequest
from handyjobs.backends.slurm import answers, arrays, sbatch, shared
from handyjobs.backends.slurm.describe import CONTROL_WORDS, refusal
from handyjobs.backends.slurm.handle import SlurmHandle
from handyjobs.backends.slurm.states import SCHEDULER
from handyjobs.backends.slurm.states import parse_sacct as parse_sacct
from handyjobs.backends.slurm.states import parse_scontrol as parse_scontrol
from handyjobs.backends.slurm.states import parse_squeue as parse_squeue
from handyjobs.core import paths, shell
from handyjobs.core.procs import Ended
from handyjobs.core.records import ClusterState, JobSpec, JobState, Run
from handyjobs.errors import HandyjobsError, JobStateError, UsageError
from handyjobs.structs import replace

#: Seconds one ``squeue`` answer is reused (in this process and, through a file, by others).
CACHE_ENV = "HANDYJOBS_SLURM_CACHE_S"
DEFAULT_CACHE_S = 2.0
#: Seconds a Slurm command may take before we give up on it for now.
COMMAND_TIMEOUT_S = 30.0
#: Seconds one ``squeue`` may take: a silent controller made it wait 9 s (``scontrol``, 18 s),
#: and ``list`` shows the last answer instead, saying so. An answering one takes milliseconds.
ASK_TIMEOUT_S = 3.0
#: Seconds one ``scancel`` may take: an answering controller takes a cancel at once; a silent
#: one, left to scancel's own patience, held ``stop`` 30 s for each job.
CANCEL_TIMEOUT_S = 6.0
#: Seconds between two looks at a job that ``stop`` cancelled.
STOP_POLL_S = 1.0

# Where Slurm's commands read their settings when SLURM_CONF is not set.
_DEFAULT_CONF = "/etc/slurm/slurm.conf"
# Slurm's answer when it has forgotten a job (or never had it); for an array's task, on
# standard output: "Job 123_4 not found" (a pending task cancelled is gone at once).
_UNKNOWN_JOB = "Invalid job id"
_UNKNOWN_TASK = re.compile(r"^Job \d+_\d+ not found$")
# sbatch errors that say Slurm could not be reached, not that the request was wrong.
_UNREACHABLE = ("Unable to contact", "Socket timed out", "Zero Bytes", "Connection refused")


def cluster_name(env: Mapping[str, str] | None = None) -> str:
    """The cluster that ``SLURM_CONF`` (else Slurm's default file) names: its ClusterName,
    lower case as Slurm keeps it; "" when the file cannot be read or names none."""
    conf = (os.environ if env is None else env).get("SLURM_CONF") or _DEFAULT_CONF
    try:
        text = Path(conf).read_text(errors="replace")
    except OSError:
        return ""
    m = re.search(r"^[ \t]*ClusterName[ \t]*=[ \t]*([^\s#]+)", text, re.MULTILINE | re.IGNORECASE)
    return m.group(1).lower() if m else ""


def elsewhere(handle: SlurmHandle) -> str | None:
    """The cluster a run belongs to when it is not the one ``SLURM_CONF`` names here, else None.

    Job numbers are per cluster: another cluster's job of the same number is not this run's,
    and a job this cluster does not list is not gone.
    """
    here = cluster_name()
    if handle.cluster and here and handle.cluster != here:
        return handle.cluster
    return None


class SlurmError(HandyjobsError):
    """A Slurm command failed (controller unreachable, cancel refused)."""


class SlurmRejected(UsageError):
    """sbatch refused the job as asked (partition, account, size): exit code 2."""


def _run(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = COMMAND_TIMEOUT_S,
) -> tuple[int, str, str]:
    """Run a Slurm command; (-1, "", why) when it cannot run or takes too long."""
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ---- one squeue for everybody ---------------------------------------------------------------


def _cache_s() -> float:
    try:
        return max(0.0, float(os.environ.get(CACHE_ENV, DEFAULT_CACHE_S)))
    except ValueError:
        return DEFAULT_CACHE_S


def _cache_key() -> str:
    """Which cluster and user an answer is about (tests run several clusters side by side)."""
    return f"{os.environ.get('SLURM_CONF', '')}|{os.getuid()}"


def snapshot(fresh: bool = False, after: float | None = None) -> dict[str, ClusterState] | None:
    """Every job of this user that Slurm still lists, by id; None when Slurm cannot be asked.

    ``fresh``: ask now, whatever is kept; ``after``: an answer kept from before that time
    will not do. A controller that did not answer a moment ago is not asked again (see
    :mod:`handyjobs.backends.slurm.answers`).
    """
    key = _cache_key()
    if not fresh:
        kept = answers.recent(key, _cache_s(), after)
        if kept is not None:
            return kept
        if after is None and answers.silent(key) is not None:
            return None
    code, out, err = _run(
        [
            "squeue",
            "--me",
            "--states=all",
            "--noheader",
            # -r: one line per array task, pending ones too; JobArrayID names a task as its
            # handle does (123_4; JobID would say the task's own number), a job as its id.
            "-r",
            "--Format=JobArrayID:|,State:|,Reason:|,NodeList:|,RestartCnt:|",
        ],
        timeout=ASK_TIMEOUT_S,
    )
    if code != 0:
        why = f"squeue gave no answer in {ASK_TIMEOUT_S:g}s" if code == -1 else _last_line(err)
        answers.no_answer(key, cluster_name(), why or f"squeue exit code {code}")
        return None
    jobs = parse_squeue(out)
    answers.answered(key, jobs)
    return jobs


def forget_snapshot() -> None:
    """Drop the answer kept in memory (the file's is checked by age)."""
    answers.forget()


def details(job_id: str) -> ClusterState | bool | None:
    """A job's full state from scontrol (then sacct): None if unknown now, False if forgotten.

    Bounded as squeue is: a controller that takes connections and answers none held
    ``scontrol`` 20 s; its silence is kept, so the other jobs of the command do not wait too.
    """
    key = _cache_key()
    if answers.silent(key) is not None:
        return None
    code, out, err = _run(["scontrol", "show", "job", "-o", job_id], timeout=ASK_TIMEOUT_S)
    if code == -1:
        answers.no_answer(key, cluster_name(), f"scontrol gave no answer in {ASK_TIMEOUT_S:g}s")
        return None
    if code == 0:
        found = parse_scontrol(out)
        if found is not None:
            return found
    elif _UNKNOWN_JOB not in err and not _UNKNOWN_TASK.match(out.strip()):
        return None  # the controller did not answer: we know nothing new
    code, out, err = _run(
        ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State,ExitCode,NodeList,Reason"],
        timeout=ASK_TIMEOUT_S,
    )
    if code == 0:
        found = parse_sacct(out, job_id)
        if found is not None:
            return found
    return False


def batch_of(req: LaunchRequest) -> tuple[JobSpec, str | None, int | None]:
    """The run's spec, its ``--dependency`` and the nodes' CPUs per GPU (for a GPU job that
    did not say)."""
    if req.spec is None or req.spec.slurm is None:
        raise ValueError("a Slurm launch needs the job's Slurm spec")
    after = sbatch.dependency(req.after, req.spec.after_any)
    slurm, share = req.spec.slurm, None
    if slurm.gpus_per_node and not slurm.cpus_per_gpu:
        share = _cpu_share(slurm.partition, req.env)
    return req.spec, after, share


def submit(scripts: Sequence[Path], env: Mapping[str, str], held: bool) -> str:
    """``sbatch`` the first script: its job id. On a refusal the scripts are removed and one
    error says why (:class:`SlurmRejected` for the request, :class:`SlurmError` for Slurm)."""
    # Held (start --hold) on the command line, not in the script: a restart is not held.
    hold = ["--hold"] if held else []
    code, out, err = _run(["sbatch", "--parsable", *hold, str(scripts[0])], dict(env) or None)
    job_id = out.strip().split(";", 1)[0]
    if code != 0 or not job_id.isdigit():
        for path in scripts:
            path.unlink(missing_ok=True)
        why = _last_line(err) or _last_line(out) or f"exit code {code}"
        why = why.removeprefix("sbatch: error: ")
        if code == -1 or any(s in why for s in _UNREACHABLE):
            raise SlurmError(f"sbatch could not submit the job: {why}; try again later")
        raise SlurmRejected(
            f"sbatch refused the job: {why}; change the Slurm options (see `sinfo` for "
            "partitions and nodes)"
        )
    forget_snapshot()
    return job_id


def _say_if_unshared(spec: JobSpec | None, env: Mapping[str, str]) -> None:
    """A note when the state folder is this machine's own and the nodes are not."""
    partition = spec.slurm.partition if spec is not None and spec.slurm is not None else None
    shared.say_if_unshared(paths.home(), partition, dict(env) or None, ASK_TIMEOUT_S)


def _cpu_share(partition: str | None, env: Mapping[str, str] | None) -> int | None:
    """CPUs per GPU of the partition's nodes, as sinfo says; None when it cannot say."""
    argv = ["sinfo", "-h", "-o", "%c %G %P", *(["-p", partition] if partition else [])]
    code, out, _ = _run(argv, dict(env) if env else None, timeout=ASK_TIMEOUT_S)
    return sbatch.cpu_share(out, partition) if code == 0 else None


class SlurmBackend:
    """Submits the runner with sbatch; asks squeue/scontrol/sacct; cancels with scancel."""

    name = "slurm"
    queues = True

    def check(self) -> None:
        """Slurm's commands must be on PATH."""
        missing = [c for c in ("sbatch", "squeue", "scancel", "scontrol") if not shell.which(c)]
        if missing:
            raise UsageError(
                f"--slurm needs Slurm's commands on PATH ({', '.join(missing)} not found); "
                "run handyjobs on a login node of the cluster"
            )

    def session_name(self, wanted: str, run: int, run_id: str) -> str:
        """Slurm job names need not be unique: the job's name."""
        return wanted

    def launch(self, req: LaunchRequest) -> Launched:
        """Write the batch script into the job's folder and submit it."""
        spec, after, share = batch_of(req)
        path = Path(req.cwd) / f"slurm-{req.run_id}.sbatch"
        pythonpath = req.env.get("PYTHONPATH")
        text = sbatch.script(
            spec, req.name, req.run, req.run_id, req.argv, req.cwd, pythonpath, after, share
        )
        arrays.write([path], text)
        job_id = submit([path], req.env, req.held)
        _say_if_unshared(spec, req.env)
        cluster = cluster_name(req.env or os.environ)
        return Launched(SlurmHandle(job_id, str(path), cluster).stored(), None)

    def launch_group(self, reqs: Sequence[LaunchRequest], parallel: int | None) -> list[Launched]:
        """One job array for the runs (a sweep): task I runs request I, at most ``parallel``
        at once; run I's handle is Slurm's name of task I, ``ARRAYID_I``."""
        if not reqs:
            return []
        _, after, share = batch_of(reqs[0])
        text = arrays.script(reqs, parallel, after, share)
        scripts = [Path(r.cwd) / f"slurm-{r.run_id}.sbatch" for r in reqs]
        arrays.write(scripts, text)
        array_id = submit(scripts, reqs[0].env, reqs[0].held)
        _say_if_unshared(reqs[0].spec, reqs[0].env)
        return arrays.handles(array_id, scripts, cluster_name(reqs[0].env or os.environ))

    def observe(self, run: Run) -> ClusterState | None:
        """Slurm's view of the run; None when Slurm cannot be asked right now."""
        handle = SlurmHandle.of(run)
        job_id = handle.job_id
        if not job_id or elsewhere(handle):
            return None  # another cluster's job: nothing can be known of it from here
        jobs = snapshot()
        if jobs is None:
            return None
        view = jobs.get(job_id)
        if view is not None and view.verdict.active:
            return view
        # Ended (squeue has no exit code) or not listed (just submitted, or long gone).
        found = details(job_id)
        if found is None:
            return view
        if found is False:
            return view or ClusterState(SCHEDULER, job_id, "UNKNOWN", JobState.LOST)
        assert isinstance(found, ClusterState)
        if view is not None and not found.restarts:
            return replace(found, restarts=view.restarts)
        return found

    def runner_alive(self, run: Run) -> bool:
        """While Slurm has the job queued, running or suspended (or cannot say)."""
        job_id = SlurmHandle.of(run).job_id
        jobs = snapshot() if job_id and not elsewhere(SlurmHandle.of(run)) else None
        listed = None if jobs is None or job_id is None else jobs.get(job_id)
        if listed is not None:
            return listed.verdict.active  # its end's details are not needed to know that
        view = self.observe(run)
        return view is None or view.verdict.active

    def leftover_pids(self, run: Run) -> tuple[int, ...]:
        """Processes on the cluster's nodes are Slurm's to end: none to list from here."""
        return ()

    def cancel_many(self, runs: Sequence[Run]) -> list[str]:
        """One ``scancel`` with every job id of this cluster's (52 jobs once took 260 calls
        one by one); ``terminate`` then only waits for them. Another cluster's are left to
        ``terminate``, which says where to stop them."""
        mine = {
            SlurmHandle.of(run).job_id: run.run_id
            for run in runs
            if SlurmHandle.of(run).job_id and not elsewhere(SlurmHandle.of(run))
        }
        ids = sorted(str(j) for j in mine)
        if len(ids) < 2:
            return []  # one job: terminate cancels it, and says why when Slurm refuses
        code, err = _scancel(ids)
        if code == -1:
            # Not reached: none is tried again by itself (each would wait as long); each
            # stop says so.
            _unanswered.update(dict.fromkeys(ids, err))
            return []
        # scancel goes on past a job it refuses ("... on job id 42: ..."): that one is
        # tried again by itself, and its refusal said then.
        refused = set(re.findall(r"job id (\d+(?:_\d+)?)", err)) if code else set()
        ids = [j for j in ids if j not in refused]
        _cancelled.update(dict.fromkeys(ids, time.time()))
        forget_snapshot()
        return [mine[j] for j in ids]

    def terminate(self, run: Run, grace_s: float) -> Ended:
        """``scancel``, then wait for the job to end; SIGKILL to all of it after ``grace_s``."""
        handle = SlurmHandle.of(run)
        job_id = handle.job_id
        if not job_id:
            return Ended((), ())
        other = elsewhere(handle)
        if other:
            raise SlurmError(
                f"job {run_name(run)} is Slurm job {job_id} of cluster {other}, and SLURM_CONF "
                f"here names cluster {cluster_name()}: stop it where SLURM_CONF names {other}"
            )
        seen = _cancelled.pop(job_id, None)  # cancelled with others, in one scancel
        if seen is None:
            unanswered = _unanswered.pop(job_id, None)
            code, err = (-1, unanswered) if unanswered is not None else _scancel([job_id])
            if code != 0:
                why = err if code == -1 else (_last_line(err) or f"exit code {code}")
                raise SlurmError(
                    f"scancel {job_id} failed: {why}; the job is as it was, or cancelled "
                    f"late: `handyjobs stop {run_name(run)}` again once Slurm answers, or "
                    f"`scancel {job_id}` yourself"
                )
            seen = time.time()
        killed = False
        deadline = time.monotonic() + grace_s
        while True:
            # An answer taken after the cancel (or the last look) will do: the jobs
            # cancelled together share one squeue per look.
            jobs = snapshot(after=seen)
            seen = answers.taken() or time.time()
            view = None if jobs is None else jobs.get(job_id)
            if jobs is not None and (view is None or view.verdict not in _ALIVE):
                break
            if time.monotonic() >= deadline:
                if killed:
                    break
                _run(["scancel", "--full", "--signal=KILL", job_id])
                killed, deadline = True, time.monotonic() + 15.0
            time.sleep(STOP_POLL_S)
        return Ended((), ())

    def hold(self, run: Run, held: bool) -> None:
        """``scontrol uhold`` a pending job (or ``release`` it); one line when Slurm refuses.

        ``uhold`` is the user's hold, whoever asks: an operator's ``hold`` is an
        administrator's, which the job's owner could not release; for a user they are one.
        """
        _control(run, "uhold" if held else "release")

    def pause(self, run: Run, paused: bool) -> int | None:
        """``scontrol suspend`` a running job (or ``resume`` it): Slurm stops every process of
        it on every node; None, as Slurm does not say how many."""
        _control(run, "suspend" if paused else "resume")
        return None

    def signal(self, run: Run, sig: int) -> int | None:
        """``scancel --signal SIG``: Slurm signals every process of the job's steps on every
        node (not the batch script: the runner, which would read SIGUSR1 as the warning)."""
        _control(run, "signal", signal.Signals(sig).name.removeprefix("SIG"))
        return None

    def end_runner(self, run: Run) -> None:
        """SIGKILL to every process of the job, the batch script included."""
        handle = SlurmHandle.of(run)
        if handle.job_id and not elsewhere(handle):
            _run(["scancel", "--full", "--signal=KILL", handle.job_id])
            forget_snapshot()

    def session_alive(self, run: Run) -> bool:
        """True while Slurm runs the job (suspended too: its allocation is there)."""
        view = self.observe(run)
        return view is not None and view.verdict in (JobState.RUNNING, JobState.PAUSED)

    def attach_argv(self, run: Run) -> list[str]:
        """There is no terminal to attach to: say what can be done instead."""
        job_id = SlurmHandle.of(run).job_id or "?"
        raise JobStateError(
            f"a Slurm job has no terminal to attach to; follow its output with `handyjobs logs "
            f"{run_name(run)} -f`, or open a shell in its allocation with `srun --jobid "
            f"{job_id} --overlap --pty bash` (`sattach {job_id}.0` shows the step's own I/O)"
        )

    def send(self, run: Run, text: str) -> None:
        """A batch job's standard input is not a terminal: nothing can be typed into it."""
        raise JobStateError(
            "a Slurm job reads no terminal; pass input through a file on the shared file system"
        )

    def log_path(self, name: str, root: Path) -> Path:
        """The log the runner tees into, in the job's folder (shared with the nodes)."""
        return paths.log_path(name, root)


_ALIVE = (JobState.QUEUED, JobState.RUNNING, JobState.PAUSED)
#: Job ids cancelled together by :meth:`SlurmBackend.cancel_many`, and when.
_cancelled: dict[str, float] = {}
#: Job ids whose cancel (with others, in one scancel) got no answer in time, and why.
_unanswered: dict[str, str] = {}


def _scancel(ids: Sequence[str]) -> tuple[int, str]:
    """``scancel IDS`` within :data:`CANCEL_TIMEOUT_S`: (its exit code, its stderr), or (-1,
    why) when the controller did not answer; that silence is kept, as squeue's is."""
    code, _, err = _run(["scancel", *ids], timeout=CANCEL_TIMEOUT_S)
    if code == -1:
        why = f"scancel gave no answer in {CANCEL_TIMEOUT_S:g}s"
        answers.no_answer(_cache_key(), cluster_name(), why)
        return -1, why
    return code, err


def _control(run: Run, verb: str, sig: str = "") -> None:
    """``scontrol VERB JOBID`` for the run's job, then a fresh look (the next ``list``, here
    or in another command within the cache time, must not read the state from before)."""
    handle = SlurmHandle.of(run)
    name, job_id, action = run_name(run), handle.job_id, CONTROL_WORDS[verb]
    if not job_id:
        raise JobStateError(f"job {name} has no Slurm job yet; try again in a moment")
    other = elsewhere(handle)
    if other:
        raise SlurmError(
            f"job {name} is Slurm job {job_id} of cluster {other}, and SLURM_CONF here names "
            f"cluster {cluster_name()}: {action} it where SLURM_CONF names {other}"
        )
    argv = ["scontrol", verb, job_id]
    if verb == "signal":
        argv = ["scancel", f"--signal={sig}", job_id]
    code, out, err = _run(argv)
    if code != 0:
        raise SlurmError(refusal(verb, job_id, name, err or out, code))
    forget_snapshot()
    snapshot(fresh=True)


def run_name(run: Run) -> str:
    """The job's name as the backend knows it (the batch script's job name)."""
    script = SlurmHandle.of(run).script
    return Path(script).parent.name if script else "NAME"


#: The core's half of this backend, as :func:`handyjobs.backends.base.get` finds it.
BACKEND = SlurmBackend
