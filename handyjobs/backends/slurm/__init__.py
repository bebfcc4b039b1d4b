"""Runs on a Slurm cluster: sbatch script, srun step, node wrapper, squeue views."""
