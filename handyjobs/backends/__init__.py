"""One folder per backend, both halves: how the core reaches a run, and the job side."""
