"""The ``spikenorm`` console script: the studies' commands, and every other command to the CLI.

* ``spikenorm study STUDY.yaml ...``: :func:`spikenorm.studies.study.study_command` (a grid of ``spikenorm fit``
  runs, here or on a cluster);
* ``spikenorm compare RUNS ...``: :func:`spikenorm.studies.compare.compare_command` (tables of finished runs);
* anything else (``fit``, ``validate``, ``test``, ``predict``, ``diagnose``): :func:`spikenorm.cli.main`.

A module of its own because the study runner checks its run configurations with the CLI's parser: the CLI does not
import the studies, so the two never import each other.
"""

from __future__ import annotations

import sys

__all__ = ["COMPARE", "STUDY", "main"]

#: the commands of :mod:`spikenorm.studies`
STUDY, COMPARE = "study", "compare"


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``spikenorm`` console script (``args``: the command line, ``sys.argv[1:]`` by default)."""
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] == STUDY:
        from spikenorm.studies.study import study_command

        sys.exit(study_command(argv[1:]))
    if argv and argv[0] == COMPARE:
        from spikenorm.studies.compare import compare_command

        compare_command(argv[1:])
        return
    from spikenorm.cli import main as cli_main

    cli_main(args)


if __name__ == "__main__":
    main()
