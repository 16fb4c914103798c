"""`nws data prepare` / `python -m data_prep prepare`: parse the command line and call data_prep.prepare.

Bad input (a dataset laid out otherwise than expected, a bad image under --strict, unusable options) ends
with a one-line error naming the path or option and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from data_prep.manifest import split_files

TASK_KINDS = ("auto", "group", "blocks", "random", "explicit", "all", "permuted", "rotated")
EPILOG = """examples:
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


def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", default=None,
                   help="digits | fashion_mnist | cifar100 | imagenet | image_folder | cub2sketches | miniimagenet "
                        "(with -c: none, the config's data section says it)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides (with -c)")
    p.add_argument("-c", "--config", type=Path, default=None,
                   help="prepare the data section of this experiment config, as `nws pipeline run` does, into "
                        "runs/<name>/data (the folder the other stage commands read)")
    p.add_argument("--runs-dir", type=Path, default=None, help="with -c: the runs folder (default runs)")
    p.add_argument("--variant", default=None, metavar="NAME",
                   help="with -c: a run of another config kept apart, runs/<name>/variants/NAME/data")
    p.add_argument("--replace", action="store_true",
                   help="with -c: this data section replaces the one the folder's runs were made with "
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


def build_parser(prog: str = "python -m data_prep") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="The data stage: sources -> task shards.")
    sub = parser.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    _add_prepare(sub)
    _add_verify(sub)
    return parser


def register(subparsers) -> None:
    """Adds `data` (with `prepare`) to the `nws` command line (pipeline/cli.py)."""
    data = subparsers.add_parser("data", help="prepare datasets: task shards in webdataset and FFCV formats",
                                 description="The data stage: sources -> task shards.")
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    _add_prepare(sub)
    _add_verify(sub)


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="write tasks.json, shards, .beton files and manifest.json",
                       description="Turn a dataset as distributed into task units (webdataset shards and FFCV "
                                   ".beton files per task and split, plus the all-classes `pretrain` unit), "
                                   "verified and resumable.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_prepare_arguments(p)
    p.set_defaults(func=run_prepare)


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="re-hash every shard and .beton against manifest.json",
                       description="Re-hash every file of every prepared unit against the sha256 and size that "
                                   "manifest.json records. Exit 0 when all match, 4 when a file is missing or "
                                   "damaged (each one named; `nws data prepare` with the same arguments rebuilds "
                                   "those units), 2 when the folder holds no manifest.")
    p.add_argument("dir", type=Path, help="the prepared data folder (runs/<name>/data)")
    p.set_defaults(func=run_verify)


def run_verify(args) -> int:
    from base.layout import MANIFEST
    from data_prep.manifest import load_manifest, verify_unit

    if not (args.dir / MANIFEST).is_file():
        print(f"error: {args.dir / MANIFEST}: file not found; not a folder written by `nws data prepare`",
              file=sys.stderr)
        return 2
    try:
        units = load_manifest(args.dir)["units"]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
    return 4 if problems else 0


def _parse_options(items: list[str]) -> dict:
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


def split_options(source, kind: str, classes_per_task: int | None = None, num_tasks: int | None = None,
                  seed: int = 0, order: str | None = None, explicit: list | None = None,
                  family: dict | None = None) -> tuple[str, dict]:
    """(kind, split_tasks options) with `auto` decided from the opened source: group when it has groups, else
    blocks of 2 classes for at most 20 classes (or when a size is given), else all. Explicit class ids given as
    digit strings become ints unless a class has that name. `family`: count, angles, max_angle of the permuted and
    rotated kinds (None values left out)."""
    sized = classes_per_task is not None or num_tasks is not None
    if kind == "auto":
        n = len(source.classes)
        kind = "group" if source.groups else "blocks" if sized or (n <= 20 and n % 2 == 0) else "all"
    opts: dict = {}
    if kind in ("blocks", "random"):
        opts = {"classes_per_task": classes_per_task, "num_tasks": num_tasks}
        if not sized:
            opts["classes_per_task"] = 2
        opts = {k: v for k, v in opts.items() if v is not None}
        if kind == "random":
            opts["seed"] = seed
    elif kind == "group" and order:
        opts["order"] = order
    elif kind == "explicit":
        if not explicit:
            raise ValueError("a task split of kind explicit needs the class lists (tasks.explicit)")
        names = set(source.classes)
        opts["explicit"] = [[c if not isinstance(c, str) or c in names or not c.isdigit() else int(c) for c in part]
                            for part in explicit]
    elif kind in ("permuted", "rotated"):
        given = {k: v for k, v in (family or {}).items() if v is not None}
        if "count" not in given and (kind == "permuted" or "angles" not in given):
            raise ValueError(f"{kind} tasks need the number of tasks (tasks.count, --count)")
        opts = {**given, "seed": seed} if kind == "permuted" else given
    return kind, opts


def prepare_section(d, out: Path, force: bool = False, progress: bool = True) -> dict:
    """data_prep.prepare as the `data` section of an experiment config (data_prep.config.DataConfig) says: what the
    pipeline's data stage and `nws data prepare -c CONFIG` run."""
    from data_prep.prepare import prepare
    from data_prep.sources import open_source

    source = open_source(d.source, d.root, **d.options)
    t = d.tasks
    kind, opts = split_options(source, t.kind, t.classes_per_task, t.num_tasks, t.seed, t.order, t.explicit,
                               family=t.split_options())
    return prepare(d.source, d.root, out, d.formats, kind, opts, source_options=d.options,
                   pretrain_set=d.pretrain_set, max_per_shard=d.max_per_shard, strict=d.strict, force=force,
                   source=source, per_class=d.per_class, per_class_seed=d.per_class_seed, progress=progress)


def config_options(args):
    """`nws data prepare -c CONFIG [key=value ...]`: the config's data section and the folder it goes to (--out, else
    runs/<name>/data of pipeline.layout). The first positional word is an override here, not a source; the
    options that the data section holds are refused, naming the key to set instead. A folder whose runs hold
    another data section is refused (pipeline.layout's variant rule; --replace makes this one the folder's)."""
    from base.config import ConfigError, resolved
    from pipeline.config import stage_config
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
    from data_prep.prepare import prepare
    from data_prep.sources import open_source
    from nws.disk import handle

    try:
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
    except Exception as e:  # an error with an exit code (nws.exits) ends the command in one line; others are bugs
        return handle(e, args.out or "the data folder")
    print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    """The end-of-run table: images per unit and split, size, built or skipped; then totals."""
    splits = sorted({s for u in summary["units"].values() for s in u["splits"]})
    head = ["unit", "classes", *splits, "MiB", "bad", "status"]
    rows = [[name, str(u["classes"]), *(str(u["splits"].get(s, "-")) for s in splits),
             f"{u['bytes'] / 2**20:.1f}", str(u["bad_images"]),
             f"view of {u['view_of']}" if u.get("view_of") else "built" if u["built"] else "verified, skipped"]
            for name, u in summary["units"].items()]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    lines.append(f"{summary['source']} -> {summary['out']}: {len(summary['built'])} unit(s) built, "
                 f"{len(summary['skipped'])} verified and skipped; {summary['bytes_written'] / 2**20:.1f} MiB "
                 f"written ({summary['bytes_total'] / 2**20:.1f} MiB in all) in {summary['seconds']:.1f} s")
    if summary["bad_images"]:
        lines.append(f"{summary['bad_images']} bad image(s) skipped: see {Path(summary['out']) / 'bad_images.log'}")
    if summary["other_units"]:
        lines.append(f"kept from earlier runs (not in this request): {', '.join(summary['other_units'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
