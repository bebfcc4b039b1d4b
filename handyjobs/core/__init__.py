"""What a job is and how it changes, independent of where it runs."""
