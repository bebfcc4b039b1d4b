"""What runs in the job's session, whatever the backend: runner, tee, launch, ranks."""
