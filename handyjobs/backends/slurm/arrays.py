"""A sweep on Slurm as one job array: one ``sbatch --array=0-(N-1)%K`` for all its runs.

A sweep of 500 points as 500 jobs meets a site's limit of jobs per user and fills ``squeue``;
as one array it is one submission, shown as one job, with Slurm's throttle (``%K``) keeping at
most K of its tasks running. Each point stays a job of its own here: its run's handle is Slurm's
name of its task, ``ARRAYID_INDEX`` (``123_4``), which every Slurm command takes (``scancel
123_4`` cancels that task alone) and ``squeue -r`` lists.

The batch script (:func:`handyjobs.backends.slurm.sbatch.array_script`) is written once and
linked into every point's folder as that run's ``slurm-RUNID.sbatch``: each job keeps the script
that ran it, whatever becomes of the others' folders, for the space of one. The backend submits
it (:meth:`handyjobs.backends.slurm.backend.SlurmBackend.launch_group`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from handyjobs.backends.base import Launched, LaunchRequest
from handyjobs.backends.slurm import sbatch
from handyjobs.backends.slurm.handle import SlurmHandle
from handyjobs.core import paths
from handyjobs.errors import storage_error


def task_id(array_id: str, index: int) -> str:
    """Slurm's name of an array's task: ``123_4``."""
    return f"{array_id}_{index}"


def script(
    reqs: Sequence[LaunchRequest], parallel: int | None, after: str | None, share: int | None
) -> str:
    """The array's batch script: task I runs request I's runner, at most ``parallel`` at once."""
    first = reqs[0]
    if first.spec is None:
        raise ValueError("a Slurm launch needs the job's Slurm spec")
    # One script holds the sbatch options of all: they must be every run's own.
    wanted = sbatch.options(first.spec, first.cwd, after, share)
    for req in reqs[1:]:
        if req.spec is None or sbatch.options(req.spec, first.cwd, after, share) != wanted:
            raise ValueError("the runs of one job array must have the same Slurm options")
    points = [sbatch.ArrayPoint(r.name, r.run, r.run_id, r.argv, r.cwd) for r in reqs]
    title = first.spec.group or first.name
    pythonpath = first.env.get("PYTHONPATH")
    return sbatch.array_script(first.spec, title, points, parallel, pythonpath, after, share)


def write(scripts: Sequence[Path], text: str) -> None:
    """Write a batch script (0600, atomically) to the first path and link it to the others;
    nothing is left when that fails (a full disk is one error saying so)."""
    try:
        paths.write_atomic(scripts[0], text.encode())
        for target in scripts[1:]:
            _link(scripts[0], target)
    except OSError as exc:
        for path in scripts:
            path.unlink(missing_ok=True)
        raise storage_error(exc, "write the batch script") from exc


def _link(source: Path, target: Path) -> None:
    """A hard link (one copy on disk for the whole sweep), else a copy."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, target)
        os.chmod(target, 0o600)


def handles(array_id: str, scripts: Sequence[Path], cluster: str) -> list[Launched]:
    """Each run's handle: its task of the array, and the script in its own folder."""
    return [
        Launched(SlurmHandle(task_id(array_id, i), str(path), cluster).stored(), None)
        for i, path in enumerate(scripts)
    ]
