"""Arguments and options several commands declare alike: job names, ``--group``, ``--all``."""

from __future__ import annotations

from handyjobs.cli.parse import Arg
from handyjobs.core.options import option

NAME = Arg("name", "The job.", required=True, complete="jobs")
NAMES = Arg("names", "The jobs.", many=True, complete="jobs")
GROUP = option("--group", "str", "GROUP", "Every job of this group.")
ALL = option("--all", "flag", "", "Every job.", name="every")
JSON = option("--json", "flag", "", "JSON for scripts (schema in the docs).", name="as_json")
