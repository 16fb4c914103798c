"""The data stage as the pipeline and `nws data prepare` run it: an experiment's `data` section -> data_prep.prepare.

The section names the task split as a kind (`auto` decided here, from the opened source) and its options;
split_options turns them into what data_prep.tasks.split_tasks takes, so a config and the command-line flags of
`nws data prepare SOURCE` (pipeline/cli.py) ask for the same split the same way. format_summary is the table both
print at the end.
"""

from __future__ import annotations

from pathlib import Path


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
