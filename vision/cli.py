"""The ``vision`` command.

``vision bench norms`` and the other non-training commands are built from their functions'
signatures and docstrings by jsonargparse (the parser LightningCLI uses), so every option has
help text and a config file can hold any of them.
"""

from __future__ import annotations

import sys


def _components() -> dict:
    from vision.bench import bench_norms

    return {
        "bench": {"norms": bench_norms},
    }


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``vision`` console script."""
    from jsonargparse import auto_cli

    argv = sys.argv[1:] if argv is None else argv
    auto_cli(_components(), args=argv, as_positional=False)


if __name__ == "__main__":
    main()
