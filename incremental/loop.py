"""The task-incremental loop (seed 004_ Algorithm 1; issue 5), the same for every method:

for each task t of tasks.json: the method sets the task up, the task trains (incremental.train, resumable per
epoch), the method writes the task artifact, the loop seals it (checksums), and then every task j <= t is rebuilt
from its stored files and evaluated on its test split: row t of the accuracy matrix R. Finished tasks are never
redone: a sealed task is not retrained and an evaluated row is not recomputed. Rank 0 writes; every process
computes. At the end: `<out>/<method>/metrics.json` (accuracy metrics, measured memory as stored and coded
(incremental.coded, which writes `<out>/<method>/coded/`), times, method report, each
task's test-set size and class count, and the test of every final accuracy against chance, incremental.chance) and
an MLflow child run per method (tag `chance_tasks`: the tasks at chance; the data folder as its dataset input; after
each task the step incremental.run_metrics describes, logged once even when a run is resumed). A task at chance also
gets a WARNING line on stderr. Before task t >= 1 trains, the two accuracies of forward transfer (FWT,
incremental.evaluate_transfer) are measured on its test split, each saved in the progress as soon as it is measured.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from base.config import config_hash, resolved
from base.layout import METRICS, PROGRESS, RUN_FILE, TASKS
from base.tracking import DEFAULT_RUNS_DIR, start_run
from data_prep.manifest import read_unit
from data_prep.tasks import Task, load_tasks
from incremental import chance, checkpoint, coded, evaluate_transfer, memory, method_names, metrics, run_metrics
from incremental.config import RESUME_NEUTRAL
from incremental.evaluate import evaluate_stored
from incremental.methods import Method, get_method, make_method
from incremental.stored import (
    STORED,
    is_sealed,
    promote,
    roll_forward,
    seal_shared,
    seal_task,
    staged_records,
    verify_shared,
    verify_task,
)
from incremental.train import train_task
from loaders import make_loader
from nws.io import atomic_write_json, read_json

EVAL_SPLITS = ("test", "val")


def make_accelerator(inc) -> Accelerator:
    """CPU when asked or when no CUDA device exists (accelerate runs several CPU processes, gloo, only with
    cpu=True); bf16 autocast or none."""
    cpu = inc.cpu or not torch.cuda.is_available()
    precision = "bf16" if inc.precision == "bf16" else "no"
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != precision:
        # accelerate keeps one precision per process; a later run in the same process (pipeline, tests) with
        # another one starts its state afresh, keeping the process group (PartialState) as it is
        AcceleratorState._reset_state()
    return Accelerator(cpu=cpu, mixed_precision=precision)


def run_hash(cfg, method: str) -> str:
    """What finished tasks depend on: seeds, data, model, pretrain and the incremental settings that change what is
    trained or stored (not the method list, the task count, logging or worker counts, nor the settings the method
    does not read, `Method.ignores`), so a changed NWS-only setting keeps the baselines' stored tasks."""
    data = resolved(cfg)
    skip = set(RESUME_NEUTRAL) | set(get_method(method).ignores)
    inc = {k: v for k, v in data["incremental"].items() if k not in skip}
    inc["options"] = data["incremental"]["options"].get(method, {})
    return config_hash({"method": method, "seeds": data["seeds"], "data": data["data"], "model": data["model"],
                        "pretrain": data.get("pretrain"), "incremental": inc})


def task_list(data_dir: Path, num_tasks: int | None) -> list[Task]:
    tasks, _ = load_tasks(Path(data_dir) / TASKS)
    if num_tasks is not None and num_tasks > len(tasks):
        raise ValueError(f"incremental.num_tasks={num_tasks}, but {Path(data_dir) / TASKS} has {len(tasks)}")
    return tasks[:num_tasks]


def test_loader(method: Method, j: int, accelerator):
    cfg = method.ctx.cfg
    unit = method.ctx.data_dir / method.ctx.tasks[j].name
    last_error = None
    for split in EVAL_SPLITS:
        try:
            return make_loader(unit, split, fmt=cfg.data.loader, batch_size=cfg.incremental.eval_batch_size,
                               train=False, image_size=cfg.data.image_size, rank=accelerator.process_index,
                               world_size=accelerator.num_processes, num_workers=cfg.incremental.num_workers)
        except KeyError as e:
            last_error = e
    raise KeyError(f"{unit}: no evaluation split ({' or '.join(EVAL_SPLITS)}): {last_error}")


def eval_size(method: Method, j: int) -> int:
    """The number of images test_loader evaluates task j on (its split's count in the manifest; every rank's share
    together): the n of the chance test."""
    splits = read_unit(method.ctx.data_dir / method.ctx.tasks[j].name)["splits"]
    return int(next(splits[s]["num_samples"] for s in EVAL_SPLITS if s in splits))


def load_progress(method_dir: Path, digest: str) -> dict:
    path = method_dir / PROGRESS
    if not path.is_file():
        return {"config_hash": digest, "rows": {}, "reports": {}, "eval_seconds": {}, "transfer": {}}
    progress = read_json(path)
    if progress.get("config_hash") != digest:
        raise ValueError(f"{method_dir} holds tasks of another configuration (config hash "
                         f"{progress.get('config_hash')}, now {digest}); use another --out or delete that folder")
    return progress


def run(cfg, data_dir: str | Path, pretrain_dir: str | Path, out_dir: str | Path, methods: list[str] | None = None,
        runs_dir: str | Path = DEFAULT_RUNS_DIR, on_epoch_end: Callable[[int, int], None] | None = None
        ) -> dict[str, dict]:
    """Run every method (default: cfg.incremental.methods) over the tasks; returns {method: metrics}. Every method
    is made (its name and options checked) before the first one trains: a bad last method is refused at once."""
    names = method_names.check(methods, "methods") if methods else cfg.incremental.methods
    tasks = task_list(Path(data_dir), cfg.incremental.num_tasks)
    made = {name: make_method(name, cfg, Path(data_dir), Path(pretrain_dir), Path(out_dir) / name, tasks)
            for name in names}
    accelerator = make_accelerator(cfg.incremental)
    return {name: run_method(accelerator, method, Path(runs_dir), on_epoch_end) for name, method in made.items()}


def run_method(accelerator, method: Method, runs_dir: Path, on_epoch_end=None) -> dict:
    ctx, main = method.ctx, accelerator.is_main_process
    name, tasks, method_dir = method.name, ctx.tasks, ctx.method_dir

    def log(text: str) -> None:
        if main:
            print(f"[incremental {name}] {text}", flush=True)

    digest = run_hash(ctx.cfg, name)
    progress = load_progress(method_dir, digest)
    log(f"{len(tasks)} tasks, {accelerator.num_processes} process(es) on {accelerator.device}, "
        f"precision {ctx.cfg.incremental.precision}, output {method_dir}")
    if main:
        method_dir.mkdir(parents=True, exist_ok=True)
        # a run killed while storing a task: finish promoting its sealed shared files, or drop unsealed ones
        roll_forward(method_dir, [ctx.task_dir(t) for t in range(len(tasks))], method.shared_files())
        verify_shared(method_dir)  # the shared files the stored tasks were rebuilt with are still intact
        method.prepare()
        seal_shared(method_dir, method.shared_files())
    accelerator.wait_for_everyone()
    run_file = method_dir / RUN_FILE
    resume_id = read_json(run_file).get("run_id") if run_file.is_file() else None
    tracker = start_run(ctx.cfg.name, f"incremental-{name}", runs_dir=runs_dir,
                        enabled=main and ctx.cfg.incremental.track, resume_run_id=resume_id,
                        tags={"stage": "incremental", "method": name})
    with tracker:
        if main and tracker.run_id and resume_id != tracker.run_id:
            atomic_write_json(run_file, {"run_id": tracker.run_id})
            tracker.log_params(resolved(ctx.cfg))
        tracker.log_data(ctx.data_dir, ctx.cfg.data.source, "tasks")
        logged = tracker.steps(run_metrics.STEP_KEY)  # steps an earlier run of a resumed MLflow run logged
        for t in range(len(tasks)):
            if str(t) in progress["rows"]:
                if main:  # an evaluated task still holds the bytes it was evaluated from (issue 17), else exit 4
                    verify_task(ctx.task_dir(t))
                    if t + 1 not in logged:  # killed after the row was saved, before it was logged; or a new run
                        _log_task(tracker, method, progress, t)
                log(f"task {t} ({tasks[t].name}) stored and evaluated by an earlier run, kept: R[{t}] = "
                    + " ".join(f"{a:.4f}" for a in progress["rows"][str(t)]))
                continue
            folder = ctx.task_dir(t)
            _measure_transfer(accelerator, method, t, progress)
            if not is_sealed(folder):
                _train_and_store(accelerator, method, t, tracker, log, on_epoch_end)
            start = time.perf_counter()
            row = [evaluate_stored(method, j, test_loader(method, j, accelerator), accelerator) for j in range(t + 1)]
            progress["rows"][str(t)] = row
            progress["eval_seconds"][str(t)] = time.perf_counter() - start
            if main:
                progress["reports"][str(t)] = method.task_report(t, folder)
                atomic_write_json(method_dir / PROGRESS, progress)
                if t + 1 not in logged:
                    _log_task(tracker, method, progress, t)
            log(f"task {t} ({tasks[t].name}) stored and evaluated from its artifact: R[{t}] = "
                + " ".join(f"{a:.4f}" for a in row))
        result = {}
        if main:
            result = _metrics(method, progress, digest, accelerator, tracker.run_id)
            atomic_write_json(method_dir / METRICS, result)
            _log_run(tracker, method, result)
            chance.warn(chance.check_run(result)[0])
            log(f"final average accuracy {result['final_avg_acc']:.4f}, memory "
                f"{result['memory_mib']['total']:.3f} MiB as stored, {result['memory_coded_mib']['total']:.3f} MiB "
                f"coded -> {method_dir / METRICS}")
    accelerator.wait_for_everyone()  # no process moves on (or exits) while rank 0 still writes
    return result


def _train_report(method_dir: Path, t: int) -> Path:
    return method_dir / "reports" / f"task{t:02d}_train.json"


def _log_task(tracker, method: Method, progress: dict, t: int) -> None:
    """Step t + 1 of the method's run (incremental.run_metrics) from the evaluated rows and the stored files."""
    rows = [progress["rows"][str(i)] for i in range(t + 1)]
    train = read_json(_train_report(method.ctx.method_dir, t))
    step = run_metrics.task_step(rows, memory.total(method, t + 1), train["train_seconds"],
                                 *_transfer(progress, t + 1))
    tracker.log_metrics(step, step=t + 1)


def _transfer(progress: dict, T: int) -> tuple[list[float | None], list[float | None]]:
    """(R[t-1][t], b_t) of tasks 0..T-1 as measured (None: not measured; always for task 0)."""
    done = progress.get("transfer", {})
    return ([done.get(str(t), {}).get("before") for t in range(T)],
            [done.get(str(t), {}).get("random") for t in range(T)])


def _measure_transfer(accelerator, method: Method, t: int, progress: dict) -> None:
    """R[t-1][t] and b_t of task t >= 1 (incremental.evaluate_transfer), each saved (rank 0) once measured, so a
    resumed run measures neither again. R[t-1][t] needs the state before task t was stored: a task sealed by a run
    made before FWT was measured keeps it unmeasured (its setup would read the shared files task t rewrote)."""
    if t == 0:
        return
    done = progress.setdefault("transfer", {}).setdefault(str(t), {})
    sealed = is_sealed(method.ctx.task_dir(t))
    for key in [k for k in ("before", "random") if k not in done and not (k == "before" and sealed)]:
        loader = test_loader(method, t, accelerator)
        done[key] = (evaluate_transfer.before_learning(method, t, loader, accelerator) if key == "before" else
                     evaluate_transfer.random_init(method.ctx.cfg, t, method.ctx.tasks[t].num_classes, loader,
                                                   accelerator))
        if accelerator.is_main_process:
            atomic_write_json(method.ctx.method_dir / PROGRESS, progress)


def _train_and_store(accelerator, method: Method, t: int, tracker, log, on_epoch_end) -> None:
    """Train task t, then (rank 0) write its artifact, its training report, and seal it."""
    folder, method_dir = method.ctx.task_dir(t), method.ctx.method_dir
    if accelerator.is_main_process and folder.exists():
        shutil.rmtree(folder)  # an unsealed folder is an artifact write that was interrupted
    accelerator.wait_for_everyone()
    model, prog = train_task(accelerator, method, t, tracker, log, on_epoch_end)
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        method.write_artifact(model, t, folder)
        atomic_write_json(_train_report(method_dir, t), {
            "task": method.ctx.tasks[t].name, "train_seconds": prog.seconds, "epochs": prog.epoch,
            "steps": prog.step, "skipped_steps": prog.skipped, "last_epoch_loss": prog.last_loss,
            "world_size": accelerator.num_processes})
        # the seal is the one atomic switch: it records the staged shared files (stored.py), which are promoted
        # after it; a kill before it retrains the task, a kill after it rolls forward on the next start
        staged = staged_records(method_dir, method.shared_files())
        seal_task(folder, {"method": method.name, "task": method.ctx.tasks[t].name, "index": t, "staged": staged})
        promote(method_dir, staged, folder / STORED)
        seal_shared(method_dir, method.shared_files())
        checkpoint.clear(checkpoint.task_checkpoints(method_dir, t))
    accelerator.wait_for_everyone()


def _metrics(method: Method, progress: dict, digest: str, accelerator, run_id: str | None) -> dict:
    tasks, inc, T = method.ctx.tasks, method.inc, len(method.ctx.tasks)
    R = metrics.from_rows([progress["rows"][str(t)] for t in range(T)])
    before, random = _transfer(progress, T)
    train = [read_json(_train_report(method.ctx.method_dir, t)) for t in range(T)]
    reports = [progress["reports"][str(t)] for t in range(T)]
    doc = {"method": method.name, "tasks": [task.name for task in tasks], "acc_matrix": R,
           "test_samples": [eval_size(method, j) for j in range(T)], "task_classes": [t.num_classes for t in tasks]}
    return {
        **doc, "num_tasks": T,
        **metrics.summary(R, before, random),
        "chance": chance.summary(chance.check_run(doc)[0]),
        **memory.report(method, T),
        **coded.report(method, T),  # writes <method>/coded/: the same files under the best lossless coding
        "train_seconds": sum(r["train_seconds"] for r in train),
        "train_seconds_per_task": [r["train_seconds"] for r in train],
        "eval_seconds": sum(progress["eval_seconds"][str(t)] for t in range(T)),
        "skipped_steps": sum(r["skipped_steps"] for r in train),
        "epochs": inc.epochs, "precision": inc.precision, "world_size": accelerator.num_processes,
        "recipe": method.recipe,  # "official" (the method's own optimizer) or "paper" (§5.4's shared SGD)
        "schedule_per_task": [method.ctx.schedule_for(t).as_dict() for t in range(T)],  # incremental.schedule
        "config_hash": digest, "mlflow_run_id": run_id,
        "task_dirs": [method.ctx.task_dir(t).name for t in range(T)],
        "task_reports": reports,
        **method.run_report(reports),
    }


def _log_run(tracker, method: Method, result: dict) -> None:
    """The run's totals at step T (once: a rerun over finished tasks logs them again only as artifacts and tags),
    except forgetting, BWT and FWT, which every step has (_log_task)."""
    T = result["num_tasks"]
    scalars = {k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)
               and k not in ("forgetting", "bwt", "fwt", "final_avg_acc")}
    scalars.update({f"memory_bytes.{k}": v for k, v in result["memory_bytes"].items()})
    scalars.update({f"memory_coded_bytes.{k}": v for k, v in result["memory_coded_bytes"].items()})
    if T not in tracker.steps("final_avg_acc"):
        tracker.log_metrics({**scalars, "final_avg_acc": result["final_avg_acc"]}, step=T)
    tracker.set_tags({"chance_tasks": ",".join(result["chance"]["flagged"])})
    tracker.log_artifact(method.ctx.method_dir / METRICS)
    for t in range(result["num_tasks"]):
        folder = method.ctx.task_dir(t)
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            tracker.log_artifact(path, artifact_path=folder.name)
    reports = method.ctx.method_dir / "reports"
    for path in sorted(reports.glob("*")) if reports.is_dir() else []:
        tracker.log_artifact(path, artifact_path="reports")
