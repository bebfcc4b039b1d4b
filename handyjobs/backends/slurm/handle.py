"""The Slurm backend's handle on a run: its Slurm job id and batch script, typed."""

from __future__ import annotations

from dataclasses import dataclass

from handyjobs.core.records import Run


@dataclass(frozen=True)
class SlurmHandle:
    """What ``sbatch`` gave back for a run: the job id (None until submitted), the script."""

    job_id: str | None = None
    script: str = ""

    @classmethod
    def of(cls, run: Run) -> SlurmHandle:
        """The handle a run stores (``run.handle`` is data at rest; only this backend reads it)."""
        return cls(run.handle.get("job_id") or None, run.handle.get("script", ""))

    def stored(self) -> dict[str, str]:
        """The form ``run.handle`` keeps."""
        out = {"script": self.script}
        if self.job_id is not None:
            out["job_id"] = self.job_id
        return out
