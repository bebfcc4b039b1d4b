"""A job that waits at a prompt (the docs' `ask.py`): answer it with `handyjobs send`."""

answer = input("overwrite checkpoint? [y/N] ")
print("overwriting" if answer.strip().lower() == "y" else "kept the old checkpoint")
