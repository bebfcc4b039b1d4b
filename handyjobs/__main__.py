"""Run the CLI with ``python -m handyjobs``."""

from handyjobs.cli import main

main()
