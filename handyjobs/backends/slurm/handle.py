"""The Slurm backend's handle on a run: its Slurm job id, batch script and cluster, typed."""

from __future__ import annotations

from handyjobs.core.records import Run
from handyjobs.structs import frozen


@frozen
class SlurmHandle:
    """What ``sbatch`` gave back for a run: the job id (None until submitted), the script."""

    job_id: str | None = None
    script: str = ""
    #: The cluster the job was submitted to (its ClusterName); "" in records made before.
    cluster: str = ""

    @classmethod
    def of(cls, run: Run) -> SlurmHandle:
        """The handle a run stores (``run.handle`` is data at rest; only this backend reads it)."""
        h = run.handle
        return cls(h.get("job_id") or None, h.get("script", ""), h.get("cluster", ""))

    def stored(self) -> dict[str, str]:
        """The form ``run.handle`` keeps."""
        out = {"script": self.script}
        if self.job_id is not None:
            out["job_id"] = self.job_id
        if self.cluster:
            out["cluster"] = self.cluster
        return out
