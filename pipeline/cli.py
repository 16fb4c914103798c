"""The `nws` command line: one subcommand per stage, each registered by its own package.

Each stage package exposes `register(subparsers)` in its `cli.py`; this module only assembles them, so
`nws <stage> ...` and `python -m <stage> ...` run the very same code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, what it adds); a stage appears here once its issue has landed
STAGES = ["data_prep.cli", "pretrain.cli", "incremental.cli", "pipeline.run_cli", "pipeline.report_cli", "cluster.cli"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nws",
        description="Neural Weight Search for scalable task-incremental learning.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in STAGES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
