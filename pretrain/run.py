"""The pretrain stage end to end: join the process group, train each kind (resuming), write the outputs, measure the
networks rebuilt from them, check their health (pretrain/health.py), mark the stage complete. Re-running a complete
stage with the same config does nothing; re-running a stage stopped by the health check trains nothing again.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from base.config import config_hash, resolved
from base.layout import CONFIG, PRETRAIN_SUMMARY, RUN_FILE
from base.tracking import DEFAULT_RUNS_DIR, start_run
from nws.io import atomic_write_json, read_json
from nws.preempt import Preempted
from pretrain import checkpoint, data, health, outputs
from pretrain.config import JUDGING_KEYS
from pretrain.engine import precision_of
from pretrain.evaluate import accuracy, rebuild_nws, rebuild_plain
from pretrain.launch import init_distributed
from pretrain.loop import Job, checkpoint_dir, train


def _barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


def identity(cfg) -> dict:
    """The resolved config the outputs depend on (the health check's settings left out)."""
    config = resolved(cfg)
    config["pretrain"] = {k: v for k, v in config["pretrain"].items() if k not in JUDGING_KEYS}
    return config


def run(cfg, data_dir: str | Path, out_dir: str | Path, runs_dir: str | Path = DEFAULT_RUNS_DIR,
        allow_degenerate: bool = False, replace_changed: bool = False) -> dict:
    """Pretrain as `cfg.pretrain.kind` says; returns the summary that `pretrain.json` holds. Raises
    health.DegeneratePretraining (after writing pretrain.json, without `complete`) when the health check finds a
    degenerate kind, unless `allow_degenerate` or `pretrain.allow_degenerate`. Checkpoints left by another
    configuration are refused, or with `replace_changed` removed (training that kind starts over)."""
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    num_classes = data.num_classes(data_dir)  # a missing or incomplete data folder fails before any group forms
    # the stage's identity: its resolved config and the data it reads (a changed unit is a new run)
    auto = {"precision": precision_of(cfg.pretrain)} if cfg.pretrain.precision == "auto" else {}  # as resolved here
    digest = config_hash({"config": identity(cfg), "data": data.data_hash(data_dir), **auto})
    rank, world_size = init_distributed()
    if auto and rank == 0:
        why = "this machine computes bf16 natively" if auto["precision"] == "bf16" else (
            "no native bf16 here: autocast would emulate it, many times slower")
        print(f"[pretrain] precision auto -> {auto['precision']} ({why})", flush=True)
    if cfg.pretrain.threads:
        torch.set_num_threads(cfg.pretrain.threads)
    if outputs.is_complete(out_dir, digest):
        if rank == 0:
            print(f"[pretrain] {out_dir} is complete for this config and data; nothing to do", flush=True)
        return read_json(out_dir / PRETRAIN_SUMMARY)
    job = Job(cfg=cfg, data_dir=data_dir, out_dir=out_dir, num_classes=num_classes,
              config_hash=digest, resolved=resolved(cfg), rank=rank, world_size=world_size, runs_dir=Path(runs_dir),
              replace_changed=replace_changed)
    if rank == 0:
        atomic_write_json(out_dir / CONFIG, job.resolved)
    for kind in cfg.pretrain.kinds():
        if outputs.finished(out_dir, kind, digest):
            continue
        try:
            _train_kind(kind, job)
        except Preempted:
            _barrier(world_size)  # rank 0 has ended its MLflow run: the ranks exit together (srun --kill-on-bad-exit)
            raise
    # judged again here, with the thresholds of this call: a stopped stage rerun with --allow-degenerate (or other
    # thresholds) trains nothing again
    kinds = {kind: read_json(outputs.kind_summary_path(out_dir, kind)) for kind in cfg.pretrain.kinds()}
    healths = {kind: health.check(s, cfg.pretrain.health) for kind, s in kinds.items()}
    allowed = allow_degenerate or cfg.pretrain.allow_degenerate
    lines, stop = health.verdict(healths, cfg.pretrain.pool_init, allowed)
    if rank == 0:
        if lines and not stop:
            why = "allowed" if allowed else "a smoke run: less than one epoch or pretrain.health.min_steps steps"
            print(f"[pretrain] WARNING: degenerate outputs kept ({why}):\n  " + "\n  ".join(lines), file=sys.stderr,
                  flush=True)
        extra = {"world_size": world_size, "healthy": not any(h["degenerate"] for h in healths.values()),
                 "allowed_degenerate": allowed}
        summary = outputs.write_summary(out_dir, cfg.pretrain.kinds(), digest, extra,
                                        {kind: {"health": h} for kind, h in healths.items()}, complete=not stop)
    _barrier(world_size)
    if stop:
        raise health.DegeneratePretraining(health.stop_message(lines))
    return summary if rank == 0 else read_json(out_dir / PRETRAIN_SUMMARY)


def _train_kind(kind: str, job: Job) -> None:
    cfg, rank = job.cfg, job.rank
    stale = checkpoint.stored_hash(checkpoint_dir(job, kind))
    if job.replace_changed and stale not in (None, job.config_hash):
        if rank == 0:
            print(f"[pretrain {kind}] {checkpoint_dir(job, kind)} holds checkpoints of another configuration "
                  f"(hash {stale}, now {job.config_hash}): removed, training starts over", flush=True)
            shutil.rmtree(checkpoint_dir(job, kind))
        _barrier(job.world_size)
    run_file = checkpoint_dir(job, kind) / RUN_FILE
    resume_id = read_json(run_file).get("run_id") if run_file.is_file() else None
    tracker = start_run(cfg.name, f"pretrain-{kind}", runs_dir=job.runs_dir, enabled=rank == 0,
                        resume_run_id=resume_id, tags={"stage": "pretrain", "kind": kind})
    with tracker:
        if rank == 0:
            atomic_write_json(run_file, {"run_id": tracker.run_id})
            if resume_id is None:
                tracker.log_params(job.resolved)
                tracker.log_dict(job.resolved, CONFIG)
            tracker.log_data(job.data_dir, cfg.data.source, "pretrain")
        model, state, report = train(kind, job, tracker)
        meta = outputs.model_metadata(cfg.model, job.config_hash, job.num_classes)
        if rank == 0:
            (outputs.write_nws if kind == "nws" else outputs.write_plain)(job.out_dir, model, meta)
        _barrier(job.world_size)
        start = time.perf_counter()
        rebuild = rebuild_nws if kind == "nws" else rebuild_plain
        net = rebuild(job.out_dir, cfg.model, job.num_classes)
        acc = accuracy(net, data.eval_loader(job.data_dir, cfg.data, cfg.pretrain, rank, job.world_size))
        split = data.eval_split(job.data_dir)
        layers = report.get("layers", {})
        summary = {
            "config_hash": job.config_hash, "kind": kind, "test_accuracy": acc,
            "eval_split": split, "eval_images": data.split_size(job.data_dir, split), "num_classes": job.num_classes,
            "epoch_images": report["epoch_images"],
            "steps": state.step, "skipped_steps": state.skipped, "epochs": state.epoch, "images": state.images,
            "train_seconds": round(state.seconds, 3), "images_per_s": state.images / max(state.seconds, 1e-9),
            "eval_seconds": round(time.perf_counter() - start, 3), "world_size": job.world_size,
            "global_batch": cfg.pretrain.batch_size, "precision": precision_of(cfg.pretrain),
            "precision_setting": cfg.pretrain.precision,
            "mlflow_run_id": tracker.run_id, "layers": layers,
        }
        if kind == "nws":
            utils = [r["utilisation"] for r in layers.values()]
            summary["utilisation_min"], summary["utilisation_mean"] = min(utils), sum(utils) / len(utils)
            summary["restart_every"] = report["restart_every"]
            summary["recalibrated_batches"] = report["recalibrated_batches"]
        checked = health.check(summary, cfg.pretrain.health)
        summary["health"] = checked
        if rank == 0:
            path = outputs.kind_summary_path(job.out_dir, kind)
            atomic_write_json(path, summary)
            tracker.log_metrics({"test_accuracy": acc, "images_per_s_overall": summary["images_per_s"],
                                 **health.metrics(checked)}, step=state.step)
            tracker.set_tags({"health": "degenerate" if checked["degenerate"] else "ok"})
            tracker.log_artifact(path)
            print(f"[pretrain {kind}] test accuracy of the network rebuilt from {job.out_dir}: {acc:.4f} "
                  f"({state.step} steps, {state.skipped} skipped; chance {checked['chance']:.3f}, binomial p="
                  f"{checked['p_value']:.2g})", flush=True)
        _barrier(job.world_size)
