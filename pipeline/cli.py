"""The `nws` command line, also `python -m pipeline`: one table of commands, each its words, help, arguments and
the function it calls.

A command only turns its arguments into a validated config and folders and calls its stage's library
(data_prep.run.prepare_section, pretrain.run.run, incremental.loop.run, pipeline.runner.run_pipeline,
pipeline.report.make_report, pipeline.slurm.submit): the stage packages import nothing of this module, so the
pipeline sits above them. The arguments several commands share (-c, overrides, the layout options, --variant,
--replace) are written once below, their help per command; every error ends in one place (`call`, nws.disk.handle):
one line and the exit code each command documents, a traceback only for a bug.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cluster import mlflow_server
from nws import exits
from nws.disk import handle

DESCRIPTION = "Neural Weight Search for scalable task-incremental learning."

# ------------------------------------------------------------------------------------------------------- the help texts

PREPARE_EPILOG = """examples:
  nws data prepare -c configs/demo.yaml                           # the config's data section -> runs/demo/data
  nws data prepare -c configs/fmnist.yaml data.per_class.train=150 --runs-dir /scratch/runs
  nws data prepare digits --out runs/data/digits
  nws data prepare fashion_mnist --out runs/data/fmnist          # 5 two-class tasks + pretrain, wds and ffcv
  nws data prepare cifar100 --root cifar-100-python.tar.gz --out runs/data/cifar100   # 20 superclass tasks
  nws data prepare cifar100 --root ... --out ... --tasks blocks --num-tasks 10
  nws data prepare imagenet --root ILSVRC2012 --out runs/data/imagenet --tasks all --image-size 256 --workers 8
  nws data prepare image_folder --root my_data --out runs/data/mine --option test_fraction=0.2
  nws data prepare fashion_mnist --out runs/data/fmnist150 --per-class train=150   # 150 training images a class
  nws data prepare fashion_mnist --out runs/data/pfmnist --tasks permuted --count 10  # 10 permuted 10-class tasks
  nws data prepare fashion_mnist --out runs/data/rfmnist --tasks rotated --count 4   # at 0, 90, 180, 270 degrees

Re-running skips units whose files re-hash to the manifest; --force rebuilds them."""

PRETRAIN = """`nws pretrain -c CONFIG [--seed S] [--runs-dir DIR] [--variant NAME] [--replace] [--data DIR] [--out DIR]
[key.sub=value ...]` and `python -m pipeline pretrain ...`.

Folders default to the pipeline's (pipeline.layout): runs/<name>/data in, runs/<name>/seed<S>/pretrain out, the
seed's config.yaml written beside it, so the pipeline and the other stage commands find what this one made; a
folder whose runs hold another config is refused (--variant NAME keeps this run apart, --replace replaces it).

Launch it as it is (one process), under `deepspeed --num_gpus N` / a hostfile / torchrun, or from Slurm `srun`
(pretrain.launch resolves the ranks). Running the same command again resumes from the latest checkpoint; a
complete output folder with the same resolved config is left as it is.

After training, the outputs are checked (pretrain/health.py): a layer whose pool collapsed (KUR under
pretrain.health.min_kur) or a test accuracy not significantly above chance stops the stage before it is marked
complete, naming the layers and what to change; `--allow-degenerate` keeps such outputs without training again.
Exit codes: 0 done, 2 bad input, 3 non-finite losses, 4 no checkpoint loads, 5 degenerate outputs, 7 another
process writes the output folder (its pid, host and command named), 8 no space left on device (the file named),
9 stopped at SIGUSR1 after writing a checkpoint (Slurm's warning before the time limit; the same command resumes).
"""
PRETRAIN_EPILOG = """examples:
  nws data prepare -c configs/demo.yaml && nws pretrain -c configs/demo.yaml   # runs/demo/seed0/pretrain
  nws pretrain -c configs/demo.yaml pretrain.kind=both pretrain.epochs=5
  nws pretrain -c configs/fmnist.yaml --seed 1 --runs-dir /scratch/runs    # /scratch/runs/fmnist/seed1/pretrain
  DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 -m pipeline pretrain -c configs/demo.yaml
  deepspeed --num_gpus 8 --module pipeline pretrain -c configs/imagenet_pools_resnet18.yaml --data /data/imagenet
  srun --ntasks-per-node 8 python -m pipeline pretrain -c configs/imagenet_pools_resnet18.yaml"""
INCREMENTAL = """`nws incremental -c CONFIG [--method NAME ...] [--seed S] [--runs-dir DIR] [--variant NAME] [--replace]
[--data DIR] [--pretrain DIR] [--out DIR] [--task-inference] [--strict] [key.sub=value ...]` and
`python -m pipeline incremental ...`.

Runs one process as it is, or several under `accelerate launch` (one process per GPU; the global batch is split
over them). Running the same command again resumes: finished tasks are kept, an interrupted task continues from its
last epoch checkpoint. Folders default to the pipeline's (pipeline.layout): runs/<name>/data,
runs/<name>/seed<S>/pretrain (or pretrain.reuse) in, runs/<name>/seed<S>/incremental out, the seed's config.yaml
written beside them; a folder whose runs hold another config is refused (--variant NAME keeps this run apart,
--replace makes it the folder's config and removes the methods' tasks of the other one).

At the end every method's final task accuracies are printed, a task accuracy that is not significantly above chance
(incremental.chance: one-sided binomial test against 1/classes) marked `*`, with a WARNING line on stderr; with
--strict such a task is an error: exit code 6 (after everything is written). Other exit codes: 2 bad input,
3 non-finite loss, 4 corrupted artifact, 7 another process writes the output folder (its pid named), 8 no space left
on device (the file named), 9 stopped at SIGUSR1 after an epoch's checkpoint (Slurm's warning before the time
limit; the same command resumes).
"""
INCREMENTAL_EPILOG = """examples:
  nws incremental -c configs/demo.yaml                       # every method of incremental.methods
  nws incremental -c configs/demo.yaml --method nws --seed 1 # runs/demo/seed1/{pretrain -> incremental/nws}
  nws incremental -c configs/fmnist.yaml --method nws --method finetune incremental.epochs=5
  nws incremental -c configs/fmnist.yaml --method supsup --task-inference   # then infer the task id of test batches
  accelerate launch --multi_gpu --num_processes 4 -m pipeline incremental \\
    -c configs/split_cifar100_resnet18.yaml --method nws"""
PIPELINE_RUN = """`nws pipeline run -c CONFIG [--seed S ...] [--only STAGE | --from STAGE] [--force] [--strict]
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
PIPELINE_RUN_EPILOG = """examples:
  nws pipeline run -c configs/demo.yaml                         # everything; a second call skips every stage
  nws pipeline run -c configs/demo.yaml incremental.epochs=3 --variant ep3   # apart: runs/demo/variants/ep3
  nws pipeline run -c configs/demo.yaml incremental.epochs=3 --replace  # reruns incremental and report only
  nws pipeline run -c configs/fmnist.yaml --only pretrain --force
  nws pipeline run -c configs/split_cifar100_resnet18.yaml --seed 1 --from incremental
  srun --ntasks 8 nws pipeline run -c configs/imagenet_pools_resnet18.yaml --only pretrain   (ranks from Slurm)"""
REPORT = """`nws report (-c CONFIG | --dir runs/<name>) [--out DIR] [--runs-dir DIR] [--variant NAME]
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
REPORT_EPILOG = """examples:
  nws report -c configs/demo.yaml                  # runs/<name of demo.yaml>/report
  nws report --dir runs/demo --out /tmp/report --no-track"""
CLUSTER = """`nws cluster submit|status`: the pipeline on Slurm, one job per stage, seeds as job arrays.

    nws cluster submit -c configs/demo.yaml --seeds 2 --dry-run          # print the sbatch scripts
    nws cluster submit -c configs/imagenet_pools_resnet18.yaml --nodes 2 --gpus-per-node 8 --partition gpu \\
        --time 2-00:00:00 --signal-before 600 --setup 'module load cuda' --conda-env nws \\
        --tracking-uri http://login1:5000
    nws cluster status -c configs/demo.yaml
    nws cluster mlflow-server --port 5000     # on a login node: one MLflow server for every job's runs

Submitting again after a cancelled or preempted job resumes it: complete stages are skipped, an interrupted
pretraining or task loop continues from its latest checkpoint. With --signal-before S, Slurm sends USR1 S seconds
before the time limit: the pretraining (at its next step) or task loop (at its next epoch) writes a checkpoint and
exits with code 9, and the job requeues itself and resumes from it.
"""

# --------------------------------------------------------------------------------- the arguments several commands share


def config_argument(p, help: str, required: bool = True) -> None:
    p.add_argument("-c", "--config", required=required, type=Path, default=None, help=help)


def overrides_argument(p, help: str = "config overrides") -> None:
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help=help)


def runs_dir_argument(p, help: str, default: Path | None = None) -> None:
    p.add_argument("--runs-dir", type=Path, default=default, help=help)


def variant_argument(p, help: str) -> None:
    p.add_argument("--variant", default=None, metavar="NAME", help=help)


def replace_argument(p, help: str, *aliases: str) -> None:
    p.add_argument("--replace", *aliases, dest="replace", action="store_true", help=help)


def add_layout_arguments(p, stage: str) -> None:
    """The options of a per-seed stage command (`nws pretrain`, `nws incremental`) that place it in the pipeline's
    layout, read by seed_stage_config: --seed, --data, --out, --runs-dir, --variant."""
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="which seed's run (runs/<name>/seed<S>; default the config's first seed)")
    p.add_argument("--data", type=Path, default=None, help="prepared data folder (default runs/<name>/data)")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default runs/<name>/seed<S>/{stage})")
    runs_dir_argument(p, "where every default folder (runs/<name>/...) and the default MLflow store (mlflow.db) are "
                         "(default runs); MLFLOW_TRACKING_URI wins for the store")
    variant_argument(p, "a run of another config kept apart: runs/<name>/variants/NAME/ (see nws pipeline run)")


def keep_arguments(p, variant: str, replace: str) -> None:
    """--variant NAME or --replace, not both: how a config other than its folder's runs is run."""
    keep = p.add_mutually_exclusive_group()
    variant_argument(keep, variant)
    replace_argument(keep, replace)


# ---------------------------------------------------------------------------------------------- the config of a command


def stage_config(args):
    """The experiment config of a stage command (`-c CONFIG key.sub=value ...`) and the pipeline.layout.Layout its
    files go to by default: the pipeline's, under --runs-dir (default runs: outputs and the MLflow store) and
    --variant. Raises ConfigError (a ValueError) for a bad file or key."""
    from base.config import load_config
    from base.layout import Layout
    from base.tracking import DEFAULT_RUNS_DIR
    from pipeline.config import experiment_schema

    cfg = load_config(experiment_schema(), args.config, args.overrides)
    return cfg, Layout(Path(args.runs_dir or DEFAULT_RUNS_DIR), cfg.name, getattr(args, "variant", None))


@contextmanager
def seed_tagged(seed: int) -> Iterator[None]:
    """Meanwhile this process's MLflow runs get the seed tag (and the ` seed<S>` in their names) that the pipeline
    gives the stages it starts (pipeline.tracking.TAGS_ENV), so a stage run by hand is named like the pipeline's."""
    from base.tracking import TAGS_ENV

    saved = os.environ.get(TAGS_ENV)
    os.environ[TAGS_ENV] = json.dumps({"seed": str(seed), **json.loads(saved or "{}")})
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(TAGS_ENV, None)
        else:
            os.environ[TAGS_ENV] = saved


def seed_stage_config(args):
    """(config, layout, seed) of a per-seed stage command (pretrain, incremental): the config of seed S (`--seed`,
    default the config's first) with `seeds: [S]`, as the pipeline gives it to that stage, so a stage run by hand
    and one run by the pipeline are the same run. When the command writes into the layout (no --out), the folder's
    other runs must be of this config (pipeline.layout's variant rule; --replace skips it) and the seed's
    config.yaml is written, as the pipeline writes it: `nws report` reads it."""
    from base.config import ConfigError
    from base.ranks import is_rank_zero
    from pipeline.layout import check_folder, seed_config, write_seed_config

    cfg, layout = stage_config(args)
    seed = cfg.seeds[0] if args.seed is None else args.seed
    if seed not in cfg.seeds:
        raise ConfigError(f"--seed {seed}: not among the config's seeds {cfg.seeds} ({args.config})")
    cfg, data = seed_config(cfg, seed)
    if args.out is None:
        if not args.replace:
            check_folder(layout, data)
        if is_rank_zero():
            write_seed_config(layout, seed, data)
    return cfg, layout, seed


# ----------------------------------------------------------------------------------------------------- nws data prepare

TASK_KINDS = ("auto", "group", "blocks", "random", "explicit", "all", "permuted", "rotated")


def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", default=None,
                   help="digits | fashion_mnist | cifar100 | imagenet | image_folder | cub2sketches | miniimagenet "
                        "(with -c: none, the config's data section says it)")
    overrides_argument(p, "config overrides (with -c)")
    config_argument(p, "prepare the data section of this experiment config, as `nws pipeline run` does, into "
                       "runs/<name>/data (the folder the other stage commands read)", required=False)
    runs_dir_argument(p, "with -c: the runs folder (default runs)")
    variant_argument(p, "with -c: a run of another config kept apart, runs/<name>/variants/NAME/data")
    replace_argument(p, "with -c: this data section replaces the one the folder's runs were made with "
                        "(runs/<name>/seed*/config.yaml differs: refused without it)")
    p.add_argument("--root", default=None, help="the dataset as distributed (default: the source's default; "
                                                "fashion_mnist: /usr/share/datasets/fashion-mnist)")
    p.add_argument("--out", type=Path, default=None, help="output folder (tasks.json, manifest.json, one folder "
                                                          "per unit); required without -c")
    p.add_argument("--format", default="wds,ffcv", help="comma-separated: wds, ffcv (default: both)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="source option, e.g. test_fraction=0.2 seed=1 (repeatable)")
    g = p.add_argument_group("task split")
    g.add_argument("--tasks", default="auto", choices=TASK_KINDS,
                   help="auto (default): group when the source defines groups (CIFAR-100 superclasses, "
                        "CUB-to-Sketches datasets); else blocks of 2 classes for at most 20 classes (digits, "
                        "Fashion-MNIST: 5 tasks); else all (one task)")
    g.add_argument("--classes-per-task", type=int, default=None, help="blocks/random: classes in each task")
    g.add_argument("--num-tasks", type=int, default=None, help="blocks/random: number of tasks")
    g.add_argument("--seed", type=int, default=0, help="random: seed of the class permutation; permuted: task t's "
                                                       "pixel permutation is seeded seed + t")
    g.add_argument("--count", type=int, default=None, help="permuted/rotated: number of tasks")
    g.add_argument("--angles", default=None, metavar="A,B,...",
                   help="rotated: each task's angle in degrees (counter-clockwise); default count angles evenly "
                        "spaced over [0, --max-angle)")
    g.add_argument("--max-angle", type=float, default=None, help="rotated: default 360")
    g.add_argument("--order", choices=("alphabetical", "source"), default=None, help="group: task order")
    g.add_argument("--explicit", default=None, metavar="A,B;C,D",
                   help="explicit: tasks separated by ';', classes (names, or ids) by ','")
    g.add_argument("--per-class", action="append", default=[], metavar="SPLIT=N",
                   help="keep N images of each class in SPLIT (repeatable; e.g. train=150): a seeded sample, the same "
                        "images in every unit (--per-class-seed)")
    g.add_argument("--per-class-seed", type=int, default=0, help="seed of the --per-class sample")
    g.add_argument("--no-pretrain-set", action="store_true", help="skip the all-classes unit `pretrain`")
    w = p.add_argument_group("writing")
    w.add_argument("--max-per-shard", type=int, default=10_000, help="samples per webdataset shard")
    w.add_argument("--image-size", type=int, default=None,
                   help="store N x N images (shorter side resized to N, central square); e.g. 256 for 224 "
                        "training; default: as distributed")
    w.add_argument("--max-resolution", type=int, default=None,
                   help="instead: longer side at most N, aspect kept")
    w.add_argument("--image-format", choices=("auto", "png", "jpg"), default="auto",
                   help="webdataset encoding; auto: png up to 64x64 pixels (lossless), jpg above")
    w.add_argument("--ffcv-write-mode", choices=("auto", "raw", "jpg", "smart", "proportion"), default="auto",
                   help="FFCV RGBImageField write_mode; auto: raw up to 64x64 pixels (lossless), jpg above")
    w.add_argument("--jpeg-quality", type=int, default=90)
    w.add_argument("--workers", type=int, default=1, help="processes decoding/encoding (and FFCV writers)")
    w.add_argument("--strict", action="store_true", help="a corrupt/truncated/empty image stops the run "
                                                         "(default: skip it and list it in bad_images.log)")
    w.add_argument("--force", action="store_true", help="rebuild units that are already complete")
    w.add_argument("--quiet", action="store_true", help="no progress bars")


def _parse_options(items: list[str]) -> dict:
    import yaml

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options


def _parse_per_class(items: list[str]) -> dict[str, int]:
    counts = {}
    for item in items:
        split, sep, n = item.partition("=")
        if not sep or not split or not n.strip().isdigit():
            raise ValueError(f"--per-class {item!r}: expected SPLIT=N, e.g. train=150")
        counts[split] = int(n)
    return counts


def task_options(args, source) -> tuple[str, dict]:
    """(kind, split_tasks options) from the command-line arguments (`--explicit 'A,B;C,D'`)."""
    from data_prep.run import split_options

    explicit = None
    if args.tasks == "explicit":
        if not args.explicit:
            raise ValueError("--tasks explicit needs --explicit 'A,B;C,D'")
        explicit = [[c for c in part.split(",") if c] for part in args.explicit.split(";") if part]
    angles = None
    if args.angles is not None:
        try:
            angles = [float(a) for a in args.angles.split(",") if a.strip()]
        except ValueError:
            raise ValueError(f"--angles {args.angles!r}: expected comma-separated numbers, e.g. 0,90,180") from None
    if args.tasks not in ("permuted", "rotated"):
        given = [flag for flag, v in (("--count", args.count), ("--angles", angles), ("--max-angle", args.max_angle))
                 if v is not None]
        if given:
            raise ValueError(f"{given[0]} is for --tasks permuted or rotated, not {args.tasks}")
    return split_options(source, args.tasks, args.classes_per_task, args.num_tasks, args.seed, args.order, explicit,
                         family={"count": args.count, "angles": angles, "max_angle": args.max_angle})


def config_options(args):
    """`nws data prepare -c CONFIG [key=value ...]`: the config's data section and the folder it goes to (--out, else
    runs/<name>/data of pipeline.layout). The first positional word is an override here, not a source; the
    options that the data section holds are refused, naming the key to set instead. A folder whose runs hold
    another data section is refused (pipeline.layout's variant rule; --replace makes this one the folder's)."""
    from base.config import ConfigError, resolved
    from pipeline.layout import check_folder

    args.overrides = [args.source, *args.overrides] if args.source else args.overrides
    defaults = {"--root": (args.root, None), "--tasks": (args.tasks, "auto"), "--format": (args.format, "wds,ffcv"),
                "--per-class": (args.per_class, []), "--count": (args.count, None), "--angles": (args.angles, None),
                "--max-angle": (args.max_angle, None)}
    given = [flag for flag, (value, default) in defaults.items() if value != default]
    if given:
        raise ConfigError(f"{', '.join(given)}: with -c the config's data section says these (override data.KEY=...)")
    cfg, layout = stage_config(args)
    if args.out is None and not args.replace:
        check_folder(layout, resolved(cfg), sections=("data",))
    return cfg.data, args.out or layout.data


def run_prepare(args) -> int:
    """Bad input (a dataset laid out otherwise than expected, a bad image under --strict, unusable options) ends
    with a one-line error naming the path or option and exit code 2, never a traceback."""
    from data_prep.prepare import prepare
    from data_prep.run import format_summary, prepare_section
    from data_prep.sources import open_source

    if args.config is not None:
        d, out = config_options(args)
        summary = prepare_section(d, out, force=args.force, progress=not args.quiet)
        print(format_summary(summary))
        return 0
    if args.source is None or args.out is None or args.overrides:
        raise ValueError("give a SOURCE and --out DIR, or -c CONFIG (its data section, into runs/<name>/data)")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = sorted(set(formats) - {"wds", "ffcv"})
    if unknown or not formats:
        raise ValueError(f"--format {args.format!r}: expected a comma-separated list of wds, ffcv")
    source_options = _parse_options(args.option)
    per_class = _parse_per_class(args.per_class)
    source = open_source(args.source, args.root, **source_options)
    kind, opts = task_options(args, source)
    summary = prepare(args.source, args.root, args.out, formats, kind, opts, source_options=source_options,
                      pretrain_set=not args.no_pretrain_set, max_per_shard=args.max_per_shard,
                      image_size=args.image_size, max_resolution=args.max_resolution,
                      image_format=args.image_format, ffcv_write_mode=args.ffcv_write_mode,
                      jpeg_quality=args.jpeg_quality, strict=args.strict, force=args.force,
                      workers=args.workers, progress=not args.quiet, source=source, per_class=per_class,
                      per_class_seed=args.per_class_seed)
    print(format_summary(summary))
    return 0


# ------------------------------------------------------------------------------------------------------ nws data verify


def verify_arguments(p) -> None:
    p.add_argument("dir", type=Path, help="the prepared data folder (runs/<name>/data)")


def run_verify(args) -> int:
    from base.layout import MANIFEST
    from data_prep.manifest import load_manifest, split_files, verify_unit

    if not (args.dir / MANIFEST).is_file():
        raise FileNotFoundError(f"{args.dir / MANIFEST}: file not found; not a folder written by `nws data prepare`")
    units = load_manifest(args.dir)["units"]
    problems, files = [], 0
    for name, entry in sorted(units.items()):
        if entry.get("view_of"):  # a family's task: the files of its base unit, re-hashed as that unit's
            base = units.get(entry["view_of"])
            found = [] if base is not None and base["splits"] == entry["splits"] else [
                f"{args.dir / name}: a view of unit {entry['view_of']!r}, which the manifest lists otherwise"]
            problems += found
            print(f"{name}: {'view of ' + entry['view_of'] if not found else '1 problem'}")
            continue
        found = verify_unit(args.dir / name, entry)
        files += sum(len(split_files(s)) for s in entry["splits"].values())
        problems += found
        print(f"{name}: {'ok' if not found else f'{len(found)} problem(s)'}")
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    print(f"{args.dir}: {len(units)} unit(s), {files} file(s) re-hashed, {len(problems)} problem(s)")
    return exits.CORRUPTED if problems else 0


# --------------------------------------------------------------------------------------------------------- nws pretrain


def pretrain_arguments(p) -> None:
    config_argument(p, "experiment YAML (sections name, seeds, data, model, pretrain)")
    add_layout_arguments(p, "pretrain")
    p.add_argument("--allow-degenerate", action="store_true",
                   help="keep outputs the health check finds degenerate (collapsed pools, accuracy at chance) and mark "
                        "the stage complete instead of exiting with code 5 (also: pretrain.allow_degenerate=true)")
    replace_argument(p, "this config replaces the one the folder's runs were made with (runs/<name>/seed*/config.yaml "
                        "differs: refused without it) and checkpoints left in the output folder by another "
                        "configuration are removed, that training starting over (nws pipeline run passes it: there "
                        "the config is the truth)", "--replace-changed")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    overrides_argument(p)


def run_pretrain(args) -> int:
    from base.ranks import is_rank_zero
    from nws.lock import folder_lock
    from nws.preempt import catch
    from pretrain.run import run

    catch()  # SIGUSR1 asks for a checkpoint and a stop (nws.preempt) instead of killing this rank
    cfg, layout, seed = seed_stage_config(args)  # a ConfigError is a ValueError: exit 2 like every other bad input
    data, out = args.data or layout.data, args.out or layout.pretrain(seed)
    with seed_tagged(seed), folder_lock(out, enabled=is_rank_zero()):  # one writer of the folder (nws.lock)
        run(cfg, data, out, runs_dir=layout.runs_dir, allow_degenerate=args.allow_degenerate,
            replace_changed=args.replace)
    return 0


# ------------------------------------------------------------------------------------------------------ nws incremental


def incremental_arguments(p) -> None:
    config_argument(p, "experiment YAML (sections name, seeds, data, model, pretrain, incremental)")
    p.add_argument("--method", action="append", default=None, metavar="NAME",
                   help="method to run (repeatable); default: incremental.methods of the config")
    add_layout_arguments(p, "incremental")
    p.add_argument("--pretrain", type=Path, default=None,
                   help="pretrain outputs (default runs/<name>/seed<S>/pretrain, or pretrain.reuse)")
    replace_argument(p, "this config replaces the one the folder's runs were made with (runs/<name>/seed*/config.yaml "
                        "differs: refused without it); a method's tasks made with other settings are removed")
    p.add_argument("--task-inference", action="store_true",
                   help="after the tasks are done (or on an already finished run), evaluate with the task id unknown: "
                        "infer each test batch's task from the stored models (SupSup one-shot gradient over the "
                        "superposed masks; lowest output entropy for any method) -> <out>/<method>/task_inference.json")
    p.add_argument("--task-inference-batch-size", type=int, default=128, metavar="N",
                   help="test batch whose task is inferred (default 128, the official SupSup test batch)")
    p.add_argument("--task-inference-samples", type=int, default=None, metavar="N",
                   help="entropy over the first N samples of a batch (SupSup GNu: 1); default the whole batch")
    p.add_argument("--strict", action="store_true",
                   help="exit with code 6 when a task's final accuracy is not significantly above chance (one-sided "
                        "binomial test against 1/classes, p >= 0.01); without it such a task is only marked and warned")
    overrides_argument(p)


def print_table(results: dict[str, dict]) -> bool:
    """Every method's final task accuracies (%), a task at chance marked, and its memory in MiB as stored and coded
    (incremental.coded); True when a task is at chance."""
    from incremental import chance

    rows, flagged = [], False
    for name, result in results.items():
        if not result:
            continue
        cells = {c.task: c for c in chance.check_run(result)[0]}
        flagged |= any(c.flagged for c in cells.values())
        rows.append([name] + [chance.mark(f"{100 * a:.1f}", t in cells and cells[t].flagged)
                              for t, a in zip(result["tasks"], result["acc_matrix"][-1], strict=True)]
                    + [f"{100 * result['final_avg_acc']:.1f}", f"{result['memory_mib']['total']:.3f}",
                       f"{result['memory_coded_mib']['total']:.3f}" if "memory_coded_mib" in result else "–"])
    if not rows:
        return False
    header = ["task accuracy (%)"] + list(next(r for r in results.values() if r)["tasks"]) + ["avg", "MiB",
                                                                                                "coded MiB"]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    for row in [header] + rows:
        print(row[0].ljust(widths[0]) + "".join(c.rjust(w + 2) for c, w in zip(row[1:], widths[1:], strict=True)))
    if flagged:
        print(chance.LEGEND)
    return flagged


def run_incremental(args) -> int:
    from accelerate import PartialState

    from base.ranks import is_rank_zero
    from incremental import method_names
    from incremental.chance import EXIT_CODE
    from incremental.loop import run
    from incremental.replace import drop_changed_methods
    from nws.lock import folder_lock
    from nws.preempt import catch
    from pipeline.layout import pretrain_source

    catch()  # SIGUSR1 asks for a checkpoint and a stop (nws.preempt) instead of killing this process
    method_names.check(args.method or [], "--method")  # before the config, the data or the output folder
    cfg, layout, seed = seed_stage_config(args)
    data, out = args.data or layout.data, args.out or layout.incremental(seed)
    pretrain = args.pretrain or pretrain_source(cfg, seed, layout)
    with seed_tagged(seed), folder_lock(out, enabled=is_rank_zero()):  # one writer of the folder (nws.lock)
        if args.replace and is_rank_zero():
            drop_changed_methods(cfg, out, args.method or cfg.incremental.methods, "[incremental]")
        results = run(cfg, data, pretrain, out, methods=args.method, runs_dir=layout.runs_dir)
        inferred = {}
        if args.task_inference and PartialState().is_main_process:
            from incremental.task_inference import evaluate_run

            inferred = evaluate_run(cfg, data, pretrain, out, list(results), args.task_inference_batch_size,
                                    args.task_inference_samples)
    PartialState().destroy_process_group()  # a launched run leaves its process group cleanly
    for name, result in results.items():
        if result:
            print(f"{name}: final average accuracy {result['final_avg_acc']:.4f}, "
                  f"memory {result['memory_bytes']['total']} bytes ({result['memory_mib']['total']:.3f} MiB), "
                  f"training {result['train_seconds']:.1f} s")
    at_chance = print_table(results)
    for name, doc in inferred.items():
        for rule, r in doc["rules"].items():
            print(f"{name} task inference ({rule}, batch {doc['batch_size']}): inference accuracy "
                  f"{r['inference_acc']:.4f}, accuracy with the inferred id {r['acc_inferred']:.4f} "
                  f"(given id {r['acc_given']:.4f})")
    if at_chance and args.strict:
        print(f"error: a task's accuracy is not above chance (WARNING lines above); --strict exits with {EXIT_CODE}",
              file=sys.stderr)
        return EXIT_CODE
    return 0


# ----------------------------------------------------------------------------------------------------- nws pipeline run


def pipeline_run_arguments(p) -> None:
    from pipeline.stages import STAGES

    config_argument(p, "experiment YAML")
    p.add_argument("--seed", type=int, action="append", default=None, metavar="S",
                   help="run only this seed of the config's seeds (repeatable)")
    p.add_argument("--only", choices=STAGES, default=None, help="run this stage only")
    p.add_argument("--from", dest="start", choices=STAGES, default=None, help="run this stage and those after it")
    p.add_argument("--force", action="store_true", help="rerun the selected stages even when up to date")
    runs_dir_argument(p, "outputs and the MLflow store (default runs)", Path("runs"))
    keep_arguments(p, "a config other than the folder's runs were made with, run apart in runs/<name>/variants/NAME/ "
                      "(its own data, pretrain, incremental and report)",
                   "this config replaces the one the folder's runs were made with: the stages that read a changed key "
                   "run again (without it or --variant such a run is refused)")
    p.add_argument("--strict", action="store_true",
                   help="exit with code 6 when a task's final accuracy is not significantly above chance (one-sided "
                        "binomial test against 1/classes, p >= 0.01) in some seed")
    p.add_argument("--allow-degenerate", action="store_true",
                   help="go on from pretraining outputs its health check finds degenerate (collapsed pools, accuracy "
                        "at chance) instead of stopping there (also: pretrain.allow_degenerate=true)")
    overrides_argument(p)


def run_pipeline_command(args) -> int:
    from nws.preempt import catch
    from pipeline.runner import run_pipeline

    catch()  # SIGUSR1 is for the stage processes (nws.preempt); it must not kill the pipeline around them
    summary = run_pipeline(args.config, args.overrides, seeds=args.seed, only=args.only, start=args.start,
                           force=args.force, runs_dir=args.runs_dir, allow_degenerate=args.allow_degenerate,
                           variant=args.variant, replace=args.replace)
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


# ----------------------------------------------------------------------------------------------------------- nws report


def report_arguments(p) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    config_argument(source, "experiment YAML: reports runs/<name>", required=False)
    source.add_argument("--dir", type=Path, help="experiment folder (runs/<name>) holding seed<S>/ runs")
    p.add_argument("--out", type=Path, default=None, help="output folder (default <experiment>/report)")
    runs_dir_argument(p, "runs folder: where runs/<name> and the default MLflow store (mlflow.db) are; "
                         "MLFLOW_TRACKING_URI wins for the store")
    variant_argument(p, "with -c: report runs/<name>/variants/NAME")
    track = p.add_mutually_exclusive_group()
    track.add_argument("--run-id", default=None, help="MLflow run to log the report to")
    track.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--strict", action="store_true",
                   help="exit with code 6 when a task's accuracy is not significantly above chance in some seed")
    overrides_argument(p, "config overrides (with -c)")


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


def run_report(args) -> int:
    from base.config import ConfigError, resolved
    from base.layout import PLOTS, REPORT, RESULTS_MD
    from pipeline.report import make_report

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
    out = args.out or experiment / REPORT
    print((out / RESULTS_MD).read_text())
    print(f"report: {out / RESULTS_MD}, {out / 'results.json'}, {len(results['plots'])} plots in {out / PLOTS}")
    print(f"logged to MLflow run {run_id}" if tracker else "not logged to MLflow (no run id given or found)")
    return warn_chance(results, args.strict)


# -------------------------------------------------------------------------------------------- nws cluster submit|status

DRY_RUN_PARENT = "<created-at-submission>"


def submit_arguments(p) -> None:
    from cluster.render import STAGES

    config_argument(p, "experiment YAML")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="run seeds 0..N-1 (default: the config's seeds); one array task per seed")
    p.add_argument("--nodes", type=int, default=1, help="nodes of the pretraining job (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=0,
                   help="GPUs per node; pretraining runs one task per GPU (0: CPU ranks with gloo)")
    p.add_argument("--tasks-per-node", type=int, default=None,
                   help="pretraining tasks per node (default: --gpus-per-node, or 2 CPU ranks)")
    p.add_argument("--cpus-per-task", type=int, default=None,
                   help="CPUs of each task of every job (default: the stage's data loader workers + 1, i.e. "
                        "pretrain.num_workers + (pretrain.threads or 1) per pretraining rank, "
                        "incremental.num_workers + 1 for the task loop, 1 for data and report)")
    p.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's default)")
    p.add_argument("--time", default=None, help="time limit of each job, in Slurm's format (e.g. 1-12:00:00)")
    p.add_argument("--requeue", action="store_true", help="let Slurm requeue preempted jobs (they resume)")
    p.add_argument("--signal-before", type=int, default=None, metavar="SECONDS",
                   help="USR1 this long before --time ends (#SBATCH --signal=B:USR1@SECONDS; Slurm may send it up "
                        "to 60 s earlier): pretraining and the task loop checkpoint at their next step/epoch and "
                        "exit with code 9, and the job requeues itself to resume (implies --requeue)")
    p.add_argument("--account", default=None, help="Slurm account to charge (default: yours)")
    p.add_argument("--qos", default=None, help="Slurm quality of service")
    p.add_argument("--mem", default=None, help="memory per node, in Slurm's format (e.g. 64G)")
    p.add_argument("--constraint", default=None, help="node features the jobs need (e.g. a100)")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="any other sbatch option for every job, e.g. --sbatch=--exclusive --sbatch=--gres=gpu:a100:4 "
                        "(repeatable)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    runs_dir_argument(p, "runs folder (default runs/)", Path("runs"))
    p.add_argument("--python", default=sys.executable, help="interpreter the jobs run (default: this one)")
    p.add_argument("--setup", default="", help="shell lines every job runs first (module load, conda activate); "
                                              "`conda activate` gets conda's shell hook first")
    p.add_argument("--conda-env", default=None, metavar="NAME",
                   help="conda environment every job activates (after conda's shell hook and --setup)")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow store of the submission and every job, e.g. http://login1:5000 (`nws cluster "
                        "mlflow-server`); default $MLFLOW_TRACKING_URI, else the SQLite file <runs-dir>/mlflow.db")
    keep_arguments(p, "run this config apart, in runs/<name>/variants/NAME/ (as `nws pipeline run --variant`)",
                   "this config replaces the one the folder's runs were made with (as `nws pipeline run "
                   "--replace`); without it or --variant another config is refused at submission")
    p.add_argument("--dry-run", action="store_true", help="print the scripts and sbatch commands; submit nothing")
    overrides_argument(p, "config overrides, passed to every job")


def _load(config: Path, overrides: list[str]):
    from base.config import load_config
    from pipeline.config import experiment_schema

    return load_config(experiment_schema(), config, overrides)


def build_submission(args, parent_run_id: str, tracking_uri: str, stamp: str):
    """The cluster.render.Submission of `nws cluster submit`'s arguments."""
    from cluster.render import Resources, Submission, stage_cpus

    cfg = _load(args.config, args.overrides)
    seeds = list(range(args.seeds)) if args.seeds is not None else list(cfg.seeds)
    if not seeds:
        raise ValueError("no seeds to run: give --seeds N or list seeds in the config")
    overrides = list(args.overrides) + ([f"seeds={seeds}".replace(" ", "")] if args.seeds is not None else [])
    res = Resources(nodes=args.nodes, gpus_per_node=args.gpus_per_node, tasks_per_node=args.tasks_per_node,
                    cpus_per_task=args.cpus_per_task, partition=args.partition, time=args.time,
                    requeue=args.requeue, signal_before=args.signal_before, account=args.account, qos=args.qos,
                    mem=args.mem, constraint=args.constraint, extra=tuple(args.sbatch))
    return Submission(config=args.config.resolve(), name=cfg.name, seeds=seeds, runs_dir=args.runs_dir.resolve(),
                      workdir=Path.cwd(), python=args.python, tracking_uri=tracking_uri,
                      parent_run_id=parent_run_id, stamp=stamp, overrides=overrides,
                      stages=tuple(s.strip() for s in args.stages.split(",") if s.strip()), setup=args.setup,
                      conda_env=args.conda_env, resources=res, stage_cpus=stage_cpus(cfg), variant=args.variant,
                      replace=args.replace)


def run_submit(args) -> int:
    from base.tracking import tracking_uri
    from cluster.render import render
    from pipeline.slurm import submit

    stamp = time.strftime("%Y%m%d-%H%M%S")
    sub = build_submission(args, DRY_RUN_PARENT, args.tracking_uri or tracking_uri(args.runs_dir.resolve()), stamp)
    jobs = render(sub)
    if args.dry_run:
        for job in jobs:
            print(f"### {job.path}  (sbatch{_dependency_hint(job, jobs)} {job.path.name})\n{job.text}")
        return 0
    submitted = submit(_load(args.config, sub.overrides), sub, args.tracking_uri)
    for job, job_id in submitted:
        tasks = f" array tasks (seeds) {','.join(map(str, job.array))}" if job.array is not None else ""
        log = job.log.replace("%A", job_id).replace("%j", job_id).replace("%a", "<seed>")
        print(f"[cluster] {job.stage:<12} job {job_id}{tasks}  log {log}")
    where = "" if args.runs_dir == Path("runs") else f" --runs-dir {args.runs_dir}"
    print(f"[cluster] MLflow parent run {sub.parent_run_id} in {sub.tracking_uri}; "
          f"`nws cluster status -c {args.config}{where}` shows the jobs")
    return 0


def _dependency_hint(job, jobs) -> str:
    from cluster.submit import dependency

    earlier = [(j, f"<{j.stage} job id>") for j in jobs[:jobs.index(job)]]
    dep = dependency(job, earlier)
    return f" --dependency={dep}" if dep else ""


def status_arguments(p) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    config_argument(where, "experiment YAML (its name locates the run)", required=False)
    where.add_argument("--dir", type=Path, help="the run's folder, runs/<name>")
    runs_dir_argument(p, "runs folder (default runs/)", Path("runs"))
    variant_argument(p, "the jobs of the variant NAME (with -c)")
    p.add_argument("--all", action="store_true", help="every submission of the run, not only the latest")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--wait", action="store_true", help="first wait until every job has ended")


def run_status(args) -> int:
    """Exit 2 when the run has no submission record, 1 when Slurm does not answer (cluster.status)."""
    from base.layout import Layout
    from cluster.status import format_rows, job_rows, query_states, wait
    from cluster.submit import load_record

    folder = (args.dir if args.dir else Layout(args.runs_dir, _load(args.config, []).name, args.variant).root
              ) / "cluster"
    entries = load_record(folder)
    entries = entries if args.all else entries[-1:]
    out = []
    for entry in entries:
        ids = [j["job_id"] for j in entry["jobs"]]
        states = wait(ids, timeout=float("inf"), poll=5.0) if args.wait else query_states(ids)
        rows = job_rows(entry, states)
        out.append({**entry, "rows": rows})
        if not args.json:
            print(format_rows(entry, rows))
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


def mlflow_server_arguments(p) -> None:
    runs_dir_argument(p, "store: <runs-dir>/mlflow.db (default runs/)", Path("runs"))
    p.add_argument("--host", default="0.0.0.0", help="interface to listen on (default: all, so the nodes reach it)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=mlflow_server.WORKERS, help="request handlers (default 4)")


def run_mlflow_server(args) -> int:
    import socket

    Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
    cmd = mlflow_server.server_command_for(args.runs_dir, args.host, args.port, args.workers)
    print(f"[cluster] MLflow tracking server for {mlflow_server.store_uri(args.runs_dir)} on {args.host}:{args.port}; "
          f"submit with --tracking-uri http://{socket.gethostname()}:{args.port} (Ctrl-C stops it)", flush=True)
    os.execv(cmd[0], cmd)  # the server takes over this process: signals reach it directly
    return 0  # not reached


# ------------------------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Command:
    """One `nws` command: its words (`data prepare`), its --help, the function adding its arguments, the function
    it runs, and the folder a full disk is reported in when the writer did not name its file (nws.disk.handle)."""

    words: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
    epilog: str | None = None
    where: Callable[[argparse.Namespace], str | Path] = lambda args: ""


def _out_or_runs(args) -> str | Path:
    return args.out or args.runs_dir or ""


# the words before a command's last one: help and description of the command group they name
GROUPS = {
    "data": ("prepare datasets: task shards in webdataset and FFCV formats", "The data stage: sources -> task shards."),
    "pipeline": ("run every stage of an experiment, with caching", "The staged pipeline of an experiment."),
    "cluster": ("run the pipeline on Slurm: one job per stage, seeds as job arrays", CLUSTER),
}

COMMANDS = [
    Command("data prepare", "write tasks.json, shards, .beton files and manifest.json", add_prepare_arguments,
            run_prepare, "Turn a dataset as distributed into task units (webdataset shards and FFCV .beton files per "
                         "task and split, plus the all-classes `pretrain` unit), verified and resumable.",
            PREPARE_EPILOG, where=lambda args: args.out or "the data folder"),
    Command("data verify", "re-hash every shard and .beton against manifest.json", verify_arguments, run_verify,
            "Re-hash every file of every prepared unit against the sha256 and size that manifest.json records. Exit "
            "0 when all match, 4 when a file is missing or damaged (each one named; `nws data prepare` with the same "
            "arguments rebuilds those units), 2 when the folder holds no manifest."),
    Command("pretrain", "distil the layer-wise kernel pools (DeepSpeed, bf16, resumable)", pretrain_arguments,
            run_pretrain, PRETRAIN, PRETRAIN_EPILOG, where=_out_or_runs),
    Command("incremental", "learn the tasks one by one, store each, evaluate the stored models",
            incremental_arguments, run_incremental, INCREMENTAL, INCREMENTAL_EPILOG, where=_out_or_runs),
    Command("pipeline run", "data -> pretrain -> incremental -> report (skips unchanged stages)",
            pipeline_run_arguments, run_pipeline_command, PIPELINE_RUN, PIPELINE_RUN_EPILOG,
            where=lambda args: args.runs_dir or "the runs folder"),
    Command("report", "tables and plots of an experiment, aggregated over its seeds", report_arguments, run_report,
            REPORT, REPORT_EPILOG, where=lambda args: args.out or "the report folder"),
    Command("cluster submit", "render the stages' sbatch scripts and submit them, chained", submit_arguments,
            run_submit, CLUSTER),
    Command("cluster status", "the submitted jobs of a run: state and log files", status_arguments, run_status),
    Command("cluster mlflow-server", "one MLflow tracking server for every job's runs (on a login node)",
            mlflow_server_arguments, run_mlflow_server, mlflow_server.__doc__),
]


def _formatter(description: str | None, epilog: str | None):
    """A text written in lines (an epilog of examples, a description in paragraphs) is shown as written."""
    raw = bool(epilog) or "\n" in (description or "")
    return argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nws", description=DESCRIPTION)
    # the deepspeed launcher puts --local_rank=N right after the module (`python -m pipeline --local_rank=0 ...`)
    parser.add_argument("--local_rank", "--local-rank", dest="launcher_local_rank", type=int, default=None,
                        help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in COMMANDS:
        *group, name = command.words.split()
        into = sub
        if group:
            if group[0] not in groups:
                group_help, description = GROUPS[group[0]]
                g = sub.add_parser(group[0], help=group_help, description=description,
                                   formatter_class=_formatter(description, None))
                groups[group[0]] = g.add_subparsers(dest=f"{group[0]}_command", metavar="COMMAND", required=True)
            into = groups[group[0]]
        p = into.add_parser(name, help=command.help, description=command.description, epilog=command.epilog,
                            formatter_class=_formatter(command.description, command.epilog))
        command.arguments(p)
        p.set_defaults(nws_command=command)
    return parser


def call(command: Command, args: argparse.Namespace) -> int:
    """Run `command`; an error ends it in one line with the exit code it stands for (nws.exits: 2 bad input, 3, 4,
    5, 7, 8, 9 as each command documents), an error without one is a bug and keeps its traceback."""
    try:
        return int(command.run(args) or 0)
    except Exception as e:
        return handle(e, command.where(args))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return call(args.nws_command, args)


if __name__ == "__main__":
    sys.exit(main())
