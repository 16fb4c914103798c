"""The four stages of a pipeline run as data: what each reads, what its outputs depend on, how it runs.

DESIGN §2: data_prep -> pretrain -> incremental -> report, exchanging files only. A stage's *key* is everything its
outputs depend on (its resolved config sections and the digests of the upstream outputs it reads); its *outputs
digest* identifies the files it produced. pipeline.runner skips a stage whose stored key and outputs digest both
still hold. Pretrain and incremental run as child processes (`python -m pipeline pretrain|incremental`: the
`nws pretrain|incremental` commands), exactly the commands a user or a Slurm job runs, so a stage behaves the same
in the pipeline, alone, or under srun.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from base.config import resolved
from base.layout import (
    CHECKPOINTS,
    COMPLETE,
    MANIFEST,
    METRICS,
    PRETRAIN_SUMMARY,
    RESULTS_CSV,
    RESULTS_JSON,
    RESULTS_MD,
    RESULTS_TEX,
    STAGE_RECORD,
    TASKS,
    Layout,
)
from nws import exits, preempt
from nws.lock import child_options
from pipeline import reuse
from pipeline.layout import pretrain_source

STAGES = ("data", "pretrain", "incremental", "report")
PER_SEED = ("pretrain", "incremental")


class StageFailed(RuntimeError):
    """A stage's process exited with an error (its own message was printed above)."""

    EXIT_CODE = exits.STAGE_FAILED


@dataclass
class Stage:
    """One stage of one run: `folder` holds its outputs and its stage.json record."""

    name: str
    seed: int | None
    folder: Path
    key: dict
    outputs: Callable[[], list[Path]]  # the files whose bytes identify what the stage produced
    execute: Callable[[], None]
    clear: Callable[[], None] = field(default=lambda: None)  # what --force removes before running
    # problems with files the stage wrote beyond `outputs` (e.g. the data shards: sizes against the manifest)
    check: Callable[[], list[str]] = field(default=lambda: [])

    @property
    def label(self) -> str:
        return self.name if self.seed is None else f"{self.name} (seed {self.seed})"


def digest(paths: list[Path]) -> str | None:
    """sha256 over the named files (names and bytes); None when one is missing (the outputs are not there)."""
    h = hashlib.sha256()
    for path in paths:
        if not path.is_file():
            return None
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def output_hashes(paths: list[Path], base: Path) -> tuple[str | None, dict[str, str]]:
    """`digest(paths)` and {path relative to `base` (else absolute): sha256} of the named files that exist, from one
    read of each file. stage.json keeps both: the per-file hashes name a changed or missing file, and `nws report`
    checks a metrics.json against them."""
    h, files, complete = hashlib.sha256(), {}, True
    for path in paths:
        if not path.is_file():
            complete = False
            continue
        data = path.read_bytes()
        if complete:
            h.update(path.name.encode())
            h.update(data)
        name = str(path.relative_to(base)) if path.is_relative_to(base) else str(path)
        files[name] = hashlib.sha256(data).hexdigest()
    return (h.hexdigest()[:16] if complete else None), files


def changed_files(recorded: dict[str, str] | None, now: dict[str, str]) -> list[str]:
    """The files of `recorded` (a stage.json's `files`) that are now missing or other bytes (`now`, from
    output_hashes); [] without a record."""
    if not recorded:
        return []
    return [f"{name} {'missing' if name not in now else 'changed'}" for name, sha in recorded.items()
            if now.get(name) != sha]


def tree(folder: Path, skip: tuple[str, ...] = (CHECKPOINTS,)) -> list[Path]:
    """Every file a stage left under `folder`, sorted: what it stored, not the resumable state it kept on the way
    (the folders named in `skip`), hidden files or its own stage.json."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STAGE_RECORD
                  and not any(part in skip or part.startswith(".") for part in p.relative_to(folder).parts))


def data_files_problems(data: Path) -> list[str]:
    """Every file the data manifest lists, present with its recorded size (a stat each: the bytes are re-hashed by
    `nws data prepare` and by the loaders, not on every pipeline run)."""
    from data_prep.manifest import load_manifest, verify_unit

    return [p for unit, entry in load_manifest(data).get("units", {}).items()
            for p in verify_unit(data / unit, entry, rehash=False)]


# what a stage's exit code means where the stage says more than nws.exits.MEANINGS (its own message is printed above)
EXIT_MEANINGS = {("pretrain", 5): "degenerate pretraining outputs; pass --allow-degenerate to keep them",
                 ("pretrain", 4): "no checkpoint of the run could be loaded", ("incremental", 4): "corrupted artifact"}


def run_module(command: str, args: list[str], env: dict[str, str]) -> None:
    """`python -m pipeline command args` (`nws command args`) with the pipeline's environment; a non-zero exit is a
    StageFailed, the checkpoint-on-signal exit a Preempted. SIGUSR1 received meanwhile is passed on to the child (a
    Slurm job's shell signals only this process; srun signals both, and the child stops once either way)."""
    cmd = [sys.executable, "-m", "pipeline", command, *args]
    options = child_options()  # the stage folder's lock handed down; the child dies with this process
    with subprocess.Popen(cmd, **{**options, "env": {**options["env"], **env}}) as child:
        with preempt.forwarded_to(child):
            code = child.wait()
    if code == preempt.EXIT_CODE:
        preempt.stopping()
        raise preempt.Preempted(f"`{' '.join(cmd)}` {exits.MEANINGS[exits.PREEMPTED]}")
    if code != 0:
        meaning = EXIT_MEANINGS.get((command, code)) or exits.MEANINGS.get(code)
        raise StageFailed(f"`{' '.join(cmd)}` exited with code {code}" + (f" ({meaning})" if meaning else ""))


def data_stage(cfg, layout: Layout, force: bool, track: Callable) -> Stage:
    """The data stage, in this process (no ranks, no autocast): data_prep.prepare with the `data` section; its
    MLflow run (from `track`) gets the per-unit counts and sizes."""

    def execute() -> None:
        from data_prep.run import format_summary, prepare_section

        summary = prepare_section(cfg.data, layout.data, force)
        print(format_summary(summary), flush=True)
        with track() as run:
            run.log_params({"data": resolved(cfg)["data"]})
            run.log_metrics({"bytes_total": summary["bytes_total"], "bad_images": summary["bad_images"],
                             "units": len(summary["units"]), "seconds": summary["seconds"],
                             **{f"images.{unit}.{split}": n for unit, u in summary["units"].items()
                                for split, n in u["splits"].items()}})
            run.log_artifact(layout.data / TASKS)

    return Stage("data", None, layout.data, {"data": resolved(cfg)["data"]},
                 lambda: [layout.data / MANIFEST, layout.data / TASKS], execute,
                 check=lambda: data_files_problems(layout.data))


def pretrain_stage(cfg, seed: int, layout: Layout, upstream: str | None, env: dict[str, str],
                   allow_degenerate: bool = False) -> Stage:
    """`nws pretrain` for one seed; it exits with code 5 when its health check finds degenerate outputs
    (pretrain/health.py), which stops the pipeline, unless `allow_degenerate` (`--allow-degenerate`)."""
    out = pretrain_source(cfg, seed, layout)
    if cfg.pretrain.reuse:
        return reused_pretrain_stage(cfg, seed, layout, out)
    data = resolved(cfg)
    key = {"seeds": data["seeds"], "data": data["data"], "model": data["model"], "pretrain": data["pretrain"],
           "upstream": upstream}
    args = ["-c", str(layout.config(seed)), "--data", str(layout.data), "--out", str(out),
            "--runs-dir", str(layout.runs_dir), "--replace-changed"]
    args += ["--allow-degenerate"] if allow_degenerate else []
    return Stage("pretrain", seed, out, key, lambda: pretrain_outputs(out),
                 lambda: run_module("pretrain", args, env), lambda: shutil.rmtree(out, ignore_errors=True))


def reused_pretrain_stage(cfg, seed: int, layout: Layout, out: Path) -> Stage:
    """`pretrain.reuse`: another experiment's finished pretrain outputs, checked, not trained (nor removed). The
    pipeline checked them when it started (pipeline.reuse.announce); they are checked again here, as they may have
    been written since."""

    def execute() -> None:
        if not (out / COMPLETE).is_file():
            raise FileNotFoundError(f"pretrain.reuse={cfg.pretrain.reuse!r}: no finished pretrain outputs in {out} "
                                    "(no `complete` file; a relative path is read from the runs folder); run that "
                                    "experiment's pretrain stage first")
        reuse.check(cfg, out)

    return Stage("pretrain", seed, layout.pretrain(seed), {"reuse": str(out.resolve())},
                 lambda: pretrain_outputs(out), execute)


def pretrain_outputs(out: Path) -> list[Path]:
    """`complete` and pretrain.json first (a run that did not finish has no digest), then every stored file."""
    first = [out / COMPLETE, out / PRETRAIN_SUMMARY]
    return first + [p for p in tree(out) if p not in first]


def incremental_stage(cfg, seed: int, layout: Layout, upstream: list[str | None], env: dict[str, str]) -> Stage:
    out = layout.incremental(seed)
    key = {**resolved(cfg), "upstream": upstream}
    args = ["-c", str(layout.config(seed)), "--data", str(layout.data),
            "--pretrain", str(pretrain_source(cfg, seed, layout)),
            "--out", str(out), "--runs-dir", str(layout.runs_dir), "--replace"]

    def outputs() -> list[Path]:  # each method's metrics.json (absent: not finished), then every file it stored
        metrics = [out / m / METRICS for m in cfg.incremental.methods]
        return metrics + [p for m in cfg.incremental.methods for p in tree(out / m) if p not in metrics]

    return Stage("incremental", seed, out, key, outputs, lambda: run_module("incremental", args, env),
                 lambda: shutil.rmtree(out, ignore_errors=True))


def report_stage(layout: Layout, seeds: list[int], upstream: list[str | None], tracker) -> Stage:
    def execute() -> None:
        from pipeline.report import make_report

        make_report(layout.root, layout.report, tracker=tracker)

    tables = (RESULTS_JSON, RESULTS_MD, RESULTS_CSV, RESULTS_TEX)
    return Stage("report", None, layout.report, {"seeds": seeds, "upstream": upstream},
                 lambda: [layout.report / name for name in tables], execute,
                 lambda: shutil.rmtree(layout.report, ignore_errors=True))
