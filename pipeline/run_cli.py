"""`nws pipeline run -c CONFIG [--seed S ...] [--only STAGE | --from STAGE] [--force] [--strict]
[--variant NAME | --replace] [key.sub=value ...]` (also `python -m pipeline run ...` and `make pipeline CONFIG=...`).

Runs data -> pretrain -> incremental -> report for every seed of the config, skipping each stage whose resolved
config and input files are unchanged since it last finished (stage.json in its folder). Outputs go to
runs/<name>/: data/, seed<S>/{config.yaml, pretrain/, incremental/<method>/}, report/; MLflow to runs/mlflow.db
(or $MLFLOW_TRACKING_URI), one parent run per pipeline folder with a child run per stage, seed and method. The stage
commands (`nws data prepare -c`, `nws pretrain`, `nws incremental`, `nws report`) use the same folders.

One config per folder (pipeline.layout): a config (file or overrides) other than the one the folder's runs were made
with is refused with exit 2, naming the keys that differ; `--variant NAME` runs it apart in
runs/<name>/variants/NAME/ (its MLflow runs tagged variant=NAME), `--replace` makes it the folder's config (the stages
that read a changed key run again).

The results table at the end marks `*` a task accuracy that is not significantly above chance (incremental.chance)
and names it in a WARNING line on stderr. Exit codes: 1 a stage failed, 2 bad input, 6 with --strict when a task is
at chance (every stage ran and the report is written first), 7 another process writes the run's folder (nws.lock:
a whole run locks runs/<name>/, each stage its own folder; the message names the holder's pid, host and command),
8 no space left on device (the file named; run again after freeing space: it resumes), 9 a stage stopped at
SIGUSR1 after writing a checkpoint (Slurm's warning before the time limit, `nws cluster submit --signal-before`;
run again, or the job requeues itself, to resume).
"""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  nws pipeline run -c configs/demo.yaml                         # everything; a second call skips every stage
  nws pipeline run -c configs/demo.yaml incremental.epochs=3 --variant ep3   # apart: runs/demo/variants/ep3
  nws pipeline run -c configs/demo.yaml incremental.epochs=3 --replace  # reruns incremental and report only
  nws pipeline run -c configs/fmnist.yaml --only pretrain --force
  nws pipeline run -c configs/split_cifar100_resnet18.yaml --seed 1 --from incremental
  srun --ntasks 8 nws pipeline run -c configs/imagenet_pools_resnet18.yaml --only pretrain   (ranks from Slurm)"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.stages import STAGES

    p.add_argument("-c", "--config", required=True, type=Path, help="experiment YAML")
    p.add_argument("--seed", type=int, action="append", default=None, metavar="S",
                   help="run only this seed of the config's seeds (repeatable)")
    p.add_argument("--only", choices=STAGES, default=None, help="run this stage only")
    p.add_argument("--from", dest="start", choices=STAGES, default=None, help="run this stage and those after it")
    p.add_argument("--force", action="store_true", help="rerun the selected stages even when up to date")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="outputs and the MLflow store (default runs)")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--variant", default=None, metavar="NAME",
                      help="a config other than the folder's runs were made with, run apart in "
                           "runs/<name>/variants/NAME/ (its own data, pretrain, incremental and report)")
    keep.add_argument("--replace", action="store_true",
                      help="this config replaces the one the folder's runs were made with: the stages that read a "
                           "changed key run again (without it or --variant such a run is refused)")
    p.add_argument("--strict", action="store_true",
                   help="exit with code 6 when a task's final accuracy is not significantly above chance (one-sided "
                        "binomial test against 1/classes, p >= 0.01) in some seed")
    p.add_argument("--allow-degenerate", action="store_true",
                   help="go on from pretraining outputs its health check finds degenerate (collapsed pools, accuracy "
                        "at chance) instead of stopping there (also: pretrain.allow_degenerate=true)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.set_defaults(func=run_cli)


def register(subparsers) -> None:
    """Adds `pipeline run` to the `nws` command line (pipeline/cli.py)."""
    p = subparsers.add_parser("pipeline", help="run every stage of an experiment, with caching",
                              description="The staged pipeline of an experiment.")
    sub = p.add_subparsers(dest="pipeline_command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="data -> pretrain -> incremental -> report (skips unchanged stages)",
                         description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(run)


def run_cli(args) -> int:
    from nws.disk import handle
    from nws.preempt import catch
    from pipeline.runner import run_pipeline

    catch()  # SIGUSR1 is for the stage processes (nws.preempt); it must not kill the pipeline around them
    try:
        summary = run_pipeline(args.config, args.overrides, seeds=args.seed, only=args.only, start=args.start,
                               force=args.force, runs_dir=args.runs_dir, allow_degenerate=args.allow_degenerate,
                               variant=args.variant, replace=args.replace)
    except Exception as e:  # an error with an exit code (nws.exits) ends the run in one line; others are bugs
        return handle(e, args.runs_dir or "the runs folder")
    ran = [k for k, v in summary.items() if v["status"] == "ran"]
    print(f"[pipeline] {len(ran)} stage(s) ran, {len(summary) - len(ran)} up to date")
    if "report" in summary:
        print_results(Path(summary["report"]["folder"]), args.runs_dir)
    return chance_exit(summary, args.strict)


def chance_exit(summary: dict, strict: bool) -> int:
    """WARNING lines for the task accuracies at chance (from the report, else from the metrics.json files of the
    incremental stages that were selected); chance.EXIT_CODE when there are some under --strict."""
    from base.layout import RESULTS_JSON
    from incremental import chance
    from nws.io import read_json
    from pipeline.report import SEED_DIR
    from pipeline.report_cli import warn_chance

    if "report" in summary:
        return warn_chance(read_json(Path(summary["report"]["folder"]) / RESULTS_JSON), strict)
    cells = []
    for label, stage in summary.items():
        folder = Path(stage["folder"])
        seed = int(m.group(1)) if label.startswith("incremental") and (m := SEED_DIR.fullmatch(folder.parent.name)) \
            else None
        for path in sorted(folder.glob("*/metrics.json")) if label.startswith("incremental") else []:
            cells += [c for c in chance.check_run(read_json(path), seed)[0] if c.flagged]
    chance.warn(cells)
    return chance.EXIT_CODE if cells and strict else 0


def print_results(report: Path, runs_dir: Path) -> None:
    """The results table of the report in `report` (a task at chance marked, with the legend), where the report is,
    and how to browse the runs."""
    from incremental.chance import LEGEND, MARK

    lines = (report / "results.md").read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    print("\n" + "\n".join(lines[start:end]))
    if any(cell.strip().endswith(MARK) for line in lines[start:end] for cell in line.split("|")):
        print(LEGEND)
    print(f"\nreport: {report / 'results.md'} (plots in {report / 'plots'}, numbers in {report / 'results.json'})")
    print("MLflow UI: make ui, then open http://127.0.0.1:5000 (or: python -m pipeline.ui --runs-dir "
          f"{runs_dir})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="The staged pipeline of an experiment.")
    sub = parser.add_subparsers(dest="pipeline_command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="data -> pretrain -> incremental -> report", description=__doc__, epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(run)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
