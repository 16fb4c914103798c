"""`nws report (-c CONFIG | --dir runs/<name>) [--out DIR] [--runs-dir DIR] [--variant NAME]
[--run-id ID | --no-track] [--strict] [key.sub=value ...]`: the report of an experiment (pipeline.report), printed as
a table and written to runs/<name>/report/ (results.json, results.md, plots/). It reads the seed runs the pipeline
or the stage commands left there (seed<S>/config.yaml and incremental/); runs of different configs are not averaged
together: the report refuses them, naming the keys that differ (pipeline.aggregate.one_config).

A task accuracy that is not significantly above chance (incremental.chance) is marked `*` in the table and named in
a WARNING line on stderr; with --strict it is an error: exit code 6, after the report is written and logged. Exit
2: bad input; 8: no space left on device (the file named).

The report is logged to an existing MLflow run: --run-id, else the pipeline's parent run ($NWS_MLFLOW_PARENT_RUN_ID,
else parent_run_id of runs/<name>/pipeline.json); with none of them it is only written to disk.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EPILOG = """examples:
  nws report -c configs/demo.yaml                  # runs/<name of demo.yaml>/report
  nws report --dir runs/demo --out /tmp/report --no-track"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--config", type=Path, help="experiment YAML: reports runs/<name>")
    source.add_argument("--dir", type=Path, help="experiment folder (runs/<name>) holding seed<S>/ runs")
    p.add_argument("--out", type=Path, default=None, help="output folder (default <experiment>/report)")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="runs folder: where runs/<name> and the default MLflow store (mlflow.db) are; "
                        "MLFLOW_TRACKING_URI wins for the store")
    p.add_argument("--variant", default=None, metavar="NAME", help="with -c: report runs/<name>/variants/NAME")
    track = p.add_mutually_exclusive_group()
    track.add_argument("--run-id", default=None, help="MLflow run to log the report to")
    track.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--strict", action="store_true",
                   help="exit with code 6 when a task's accuracy is not significantly above chance in some seed")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides (with -c)")
    p.set_defaults(func=run_cli)


def register(subparsers) -> None:
    """Adds `report` to the `nws` command line (pipeline/cli.py)."""
    p = subparsers.add_parser("report", help="tables and plots of an experiment, aggregated over its seeds",
                              description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)


def parent_run_id(experiment: Path) -> str | None:
    from base.tracking import PARENT_ENV
    from nws.io import read_json

    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    path = experiment / "pipeline.json"
    return read_json(path).get("parent_run_id") if path.is_file() else None


def existing_run(run_id: str, runs_dir: Path):
    """A tracker on a run that already exists; it is not ended here (the pipeline owns its parent run)."""
    from mlflow.exceptions import MlflowException

    from base.tracking import tracking_uri
    from pipeline.tracking import attach_run

    try:
        return attach_run(run_id, runs_dir)
    except MlflowException:
        raise ValueError(f"MLflow run {run_id} not found in {tracking_uri(runs_dir)}") from None


def warn_chance(results: dict, strict: bool) -> int:
    """The WARNING lines of the flagged cells of a report (and of the runs that could not be tested); the exit
    code: chance.EXIT_CODE under --strict when a cell is flagged, else 0."""
    from incremental import chance
    from pipeline.report import chance_cells

    cells = chance_cells(results)
    chance.warn(cells)
    for u in (results.get("chance") or {}).get("not_tested", []):
        seed = "" if u["seed"] is None else f" seed{u['seed']}"
        print(f"WARNING: {u['method']}{seed}: chance test not possible: {u['reason']}", file=sys.stderr)
    if cells and strict:
        print(f"error: {len(cells)} task accuracies not above chance; --strict exits with {chance.EXIT_CODE}",
              file=sys.stderr)
        return chance.EXIT_CODE
    return 0


def run_cli(args) -> int:
    from base.config import ConfigError, resolved
    from base.layout import PLOTS, REPORT, RESULTS_MD
    from nws.disk import handle
    from pipeline.config import stage_config
    from pipeline.report import make_report

    try:
        if args.config is not None:
            cfg, layout = stage_config(args)
            runs, config, experiment = layout.runs_dir, resolved(cfg), layout.root
        else:
            if args.overrides:
                raise ConfigError(f"overrides {args.overrides} need -c CONFIG")
            if args.variant:
                raise ConfigError("--variant needs -c CONFIG (or --dir runs/<name>/variants/NAME)")
            experiment, runs, config = args.dir, args.runs_dir or args.dir.parent, None
        run_id = None if args.no_track else args.run_id or parent_run_id(experiment)
        tracker = existing_run(run_id, runs) if run_id else None
        results = make_report(experiment, args.out, tracker=tracker, config=config)
    except Exception as e:  # an error with an exit code (nws.exits) ends the command in one line; others are bugs
        return handle(e, args.out or "the report folder")
    out = args.out or experiment / REPORT
    print((out / RESULTS_MD).read_text())
    print(f"report: {out / RESULTS_MD}, {out / 'results.json'}, {len(results['plots'])} plots in {out / PLOTS}")
    print(f"logged to MLflow run {run_id}" if tracker else "not logged to MLflow (no run id given or found)")
    return warn_chance(results, args.strict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report_cli", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
