"""`nws pipeline run`: the stages in order, each skipped when nothing it depends on changed (DESIGN §2).

A stage records `stage.json` in its output folder after it finished: the hash of its key (resolved config
sections + upstream output digests) and the digest of its outputs. It is skipped when both still match, so a second
run of an unchanged config does nothing, and changing one setting reruns the stages that read it and those after
them. Each seed of `seeds` is a run of its own (`seed<S>/`, its config with `seeds: [S]`); the report aggregates
them. One MLflow parent run per pipeline folder (its id in `pipeline.json`, reused by later invocations and by
Slurm jobs through NWS_MLFLOW_PARENT_RUN_ID); every stage's runs are its children.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from base.config import ConfigError, config_hash, load_config, resolved
from base.layout import CONFIG, PIPELINE_RECORD, STAGE_RECORD, Layout
from base.ranks import is_rank_zero
from base.tracking import DEFAULT_RUNS_DIR, PARENT_ENV, TAGS_ENV, start_run
from nws.io import atomic_write_json, read_json
from nws.lock import folder_lock
from pipeline import layout as L
from pipeline import reuse
from pipeline import stages as S
from pipeline.config import experiment_schema
from pipeline.tracking import attach_run

STAGES = S.STAGES


def selected(only: str | None, start: str | None) -> list[str]:
    if only and start:
        raise ConfigError("give --only or --from, not both")
    for given in (only, start):
        if given is not None and given not in STAGES:
            raise ConfigError(f"unknown stage {given!r}; stages: {', '.join(STAGES)}")
    if only:
        return [only]
    return list(STAGES[STAGES.index(start):]) if start else list(STAGES)


def up_to_date(stage: S.Stage) -> bool:
    """stage.json says this key produced these outputs, and the outputs are still those bytes (every file the stage
    stored, re-hashed; the data shards' sizes against the manifest). A changed or missing file is named (issue 17:
    a flipped byte in a stored indices.bin was `up to date`), and the stage runs again, which for a corrupted
    stored task stops with the loop's checksum error instead of publishing the old accuracy."""
    path = stage.folder / STAGE_RECORD
    if not path.is_file():
        if S.digest(stage.outputs()) is not None:  # e.g. `nws pretrain` run by hand: its outputs are checked and kept
            print(f"[pipeline] {stage.label}: outputs without a stage record (made outside the pipeline): run to check "
                  "and record them (finished work is kept)", flush=True)
        return False
    record = read_json(path)
    if record.get("key") != config_hash(stage.key):
        print(f"[pipeline] {stage.label}: a setting or an input it reads changed", flush=True)
        return False
    outputs, files = S.output_hashes(stage.outputs(), stage.folder)
    problems = S.changed_files(record.get("files"), files) + stage.check()
    if problems or record.get("outputs") != outputs:
        shown = problems[:3] or ["the stage's outputs differ from stage.json"]
        print(f"[pipeline] {stage.label}: changed since it finished: " + "; ".join(shown)
              + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""), flush=True)
        return False
    return True


def seed_config(cfg, seed: int, layout: Layout):
    """The config of one seed's run (`seeds: [seed]`), written to seed<S>/config.yaml for the stage processes."""
    seeded, data = L.seed_config(cfg, seed)
    if is_rank_zero():
        L.write_seed_config(layout, seed, data)
    return seeded


def parent_run(cfg, layout: Layout, runs_dir: Path):
    """The pipeline folder's MLflow parent run: the one $NWS_MLFLOW_PARENT_RUN_ID names (a Slurm job of a submitted
    pipeline: attached, not ended), else the one pipeline.json names (reopened), else a new one."""
    if os.environ.get(PARENT_ENV):
        return attach_run(os.environ[PARENT_ENV], runs_dir) if is_rank_zero() else start_run("", "", enabled=False)
    path = layout.root / PIPELINE_RECORD
    known = read_json(path).get("parent_run_id") if path.is_file() else None
    tracker = start_run(cfg.name, "pipeline", runs_dir=runs_dir, enabled=is_rank_zero(), resume_run_id=known,
                        tags={"stage": "pipeline", **layout.tags()}, parent=False)
    if tracker.run_id and tracker.run_id != known:
        atomic_write_json(path, {"parent_run_id": tracker.run_id, "experiment": cfg.name})
        tracker.log_params(resolved(cfg))
        tracker.log_dict(resolved(cfg), CONFIG)
    return tracker


def run_pipeline(config: str | Path, overrides: list[str] | None = None, seeds: list[int] | None = None,
                 only: str | None = None, start: str | None = None, force: bool = False,
                 runs_dir: str | Path = DEFAULT_RUNS_DIR, allow_degenerate: bool = False, variant: str | None = None,
                 replace: bool = False) -> dict:
    """Run (or skip) the selected stages of `config`; returns {stage label: {status "ran" | "skipped", folder,
    seconds when it ran}}. A pretrain stage whose health check finds degenerate outputs stops the run (StageFailed)
    unless `allow_degenerate`. The run goes to runs/<name>, or runs/<name>/variants/<variant>; a config other than
    the one that folder's runs were made with is refused (VariantConflict, pipeline.layout) unless `replace`."""
    cfg = load_config(experiment_schema(), config, overrides)
    runs_dir = Path(runs_dir)
    chosen = selected(only, start)
    if seeds:
        unknown = sorted(set(seeds) - set(cfg.seeds))
        if unknown:
            raise ConfigError(f"--seed {unknown}: not among the config's seeds {cfg.seeds}")
    run_seeds = list(seeds or cfg.seeds)
    layout = Layout(runs_dir, cfg.name, variant)
    if not replace:  # before any stage writes (pipeline.layout: one config per folder)
        for seed in run_seeds:
            L.check_folder(layout, L.seed_config(cfg, seed)[1])
    if variant is not None:
        print(f"[pipeline] variant {variant!r}: {layout.root}", flush=True)
    if cfg.pretrain.reuse and {"pretrain", "incremental"} & set(chosen):
        reuse.announce(cfg, runs_dir)  # the reused folder named and checked before any stage runs
    layout.root.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict] = {}
    # a whole run holds the experiment folder too (one MLflow parent, one writer of pipeline.json); `--only` jobs,
    # such as Slurm's concurrent array tasks of one stage, lock just the stage folders they write
    with folder_lock(layout.root, enabled=is_rank_zero() and only is None), \
            parent_run(cfg, layout, runs_dir) as parent:
        env = {PARENT_ENV: os.environ.get(PARENT_ENV) or parent.run_id or ""}
        for stage in plan(cfg, layout, run_seeds, env, force, parent, allow_degenerate):
            if stage.name not in chosen:
                continue
            summary[stage.label] = run_stage(stage, force, parent)
    return summary


def stage_run(cfg, name: str, layout: Layout, parent_id: str | None):
    """The MLflow child run of a stage that runs in this process (data): a child of the parent run."""
    return start_run(cfg.name, name, runs_dir=layout.runs_dir, enabled=is_rank_zero(),
                     tags={"stage": name, **layout.tags()}, parent=parent_id or True)


def plan(cfg, layout: Layout, seeds: list[int], env: dict[str, str], force: bool, parent,
         allow_degenerate: bool = False):
    """The stages in order; keys are computed lazily, after the stages before them ran (their output digests)."""
    data = S.data_stage(cfg, layout, force, lambda: stage_run(cfg, "data", layout, env[PARENT_ENV]))
    yield data
    data_digest = S.digest(data.outputs())
    incremental_digests = []
    for seed in seeds:
        scfg = seed_config(cfg, seed, layout)
        seed_env = {**env, TAGS_ENV: json.dumps({"seed": str(seed), **layout.tags()})}
        pre = S.pretrain_stage(scfg, seed, layout, data_digest, seed_env, allow_degenerate)
        yield pre
        if not cfg.incremental.methods:  # a pool-pretraining experiment (imagenet_pools_resnet18)
            continue
        inc = S.incremental_stage(scfg, seed, layout, [data_digest, S.digest(pre.outputs())], seed_env)
        yield inc
        incremental_digests.append(S.digest(inc.outputs()))
    if cfg.incremental.methods:
        yield S.report_stage(layout, seeds, incremental_digests, parent)


def run_stage(stage: S.Stage, force: bool, parent) -> dict:
    """The stage, unless up to date; its folder locked meanwhile (nws.lock: one writer, handed to its child)."""
    with folder_lock(stage.folder, enabled=is_rank_zero()):
        return _run_stage(stage, force, parent)


def _run_stage(stage: S.Stage, force: bool, parent) -> dict:
    if not force and up_to_date(stage):
        print(f"[pipeline] {stage.label}: up to date, skipped ({stage.folder})", flush=True)
        return {"status": "skipped", "folder": str(stage.folder)}
    print(f"[pipeline] {stage.label}: running -> {stage.folder}", flush=True)
    if force and is_rank_zero():
        stage.clear()
    began = time.perf_counter()
    stage.execute()
    seconds = time.perf_counter() - began
    if is_rank_zero():
        outputs, files = S.output_hashes(stage.outputs(), stage.folder)
        if outputs is None:
            missing = [str(p) for p in stage.outputs() if not p.is_file()]
            raise S.StageFailed(f"{stage.label} finished without its outputs: {', '.join(missing)}")
        atomic_write_json(stage.folder / STAGE_RECORD, {"stage": stage.name, "seed": stage.seed,
                                                  "key": config_hash(stage.key), "outputs": outputs,
                                                  "files": files,
                                                  "seconds": round(seconds, 3), "finished": time.time()})
        parent.log_metrics({f"seconds.{stage.name}" + ("" if stage.seed is None else f".seed{stage.seed}"): seconds})
    print(f"[pipeline] {stage.label}: done in {seconds:.1f} s", flush=True)
    return {"status": "ran", "seconds": seconds, "folder": str(stage.folder)}
