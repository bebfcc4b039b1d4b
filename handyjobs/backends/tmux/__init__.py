"""Runs on this machine, each in a tmux session of its own."""
