"""`nws cluster submit|status`: the pipeline on Slurm, one job per stage, seeds as job arrays.

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

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cluster.render import STAGES, Resources, Submission, render, stage_cpus
from cluster.submit import SubmitError, check, dependency, load_record, record, submit_jobs

DRY_RUN_PARENT = "<created-at-submission>"


def _add_submit(sub) -> None:
    p = sub.add_parser("submit", help="render the stages' sbatch scripts and submit them, chained",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True, type=Path, help="experiment YAML")
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
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="runs folder (default runs/)")
    p.add_argument("--python", default=sys.executable, help="interpreter the jobs run (default: this one)")
    p.add_argument("--setup", default="", help="shell lines every job runs first (module load, conda activate); "
                                              "`conda activate` gets conda's shell hook first")
    p.add_argument("--conda-env", default=None, metavar="NAME",
                   help="conda environment every job activates (after conda's shell hook and --setup)")
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow store of the submission and every job, e.g. http://login1:5000 (`nws cluster "
                        "mlflow-server`); default $MLFLOW_TRACKING_URI, else the SQLite file <runs-dir>/mlflow.db")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--variant", default=None, metavar="NAME",
                      help="run this config apart, in runs/<name>/variants/NAME/ (as `nws pipeline run --variant`)")
    keep.add_argument("--replace", action="store_true",
                      help="this config replaces the one the folder's runs were made with (as `nws pipeline run "
                           "--replace`); without it or --variant another config is refused at submission")
    p.add_argument("--dry-run", action="store_true", help="print the scripts and sbatch commands; submit nothing")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, passed to every job")
    p.set_defaults(func=run_submit)


def _add_status(sub) -> None:
    p = sub.add_parser("status", help="the submitted jobs of a run: state and log files")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", type=Path, help="experiment YAML (its name locates the run)")
    where.add_argument("--dir", type=Path, help="the run's folder, runs/<name>")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="runs folder (default runs/)")
    p.add_argument("--variant", default=None, metavar="NAME", help="the jobs of the variant NAME (with -c)")
    p.add_argument("--all", action="store_true", help="every submission of the run, not only the latest")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--wait", action="store_true", help="first wait until every job has ended")
    p.set_defaults(func=run_status)


def _add_mlflow_server(sub) -> None:
    from cluster import mlflow_server

    p = sub.add_parser("mlflow-server", help="one MLflow tracking server for every job's runs (on a login node)",
                       description=mlflow_server.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="store: <runs-dir>/mlflow.db (default runs/)")
    p.add_argument("--host", default="0.0.0.0", help="interface to listen on (default: all, so the nodes reach it)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=mlflow_server.WORKERS, help="request handlers (default 4)")
    p.set_defaults(func=mlflow_server.run)


def register(subparsers) -> None:
    """Adds `cluster` (submit, status, mlflow-server) to the `nws` command line (pipeline/cli.py)."""
    p = subparsers.add_parser("cluster", help="run the pipeline on Slurm: one job per stage, seeds as job arrays",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    _add_submit(sub)
    _add_status(sub)
    _add_mlflow_server(sub)


def _load(config: Path, overrides: list[str]):
    from base.config import load_config
    from pipeline.config import experiment_schema

    return load_config(experiment_schema(), config, overrides)


def build_submission(args, parent_run_id: str, tracking_uri: str, stamp: str) -> Submission:
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
    from base.layout import Layout
    from base.tracking import tracking_uri
    from cluster.parent import end_parent, open_parent
    from pipeline.layout import check_folder, seed_config

    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent = None
    try:
        sub = build_submission(args, DRY_RUN_PARENT, args.tracking_uri or tracking_uri(args.runs_dir.resolve()),
                               stamp)
        jobs = render(sub)
        if args.dry_run:
            for job in jobs:
                print(f"### {job.path}  (sbatch{_dependency_hint(job, jobs)} {job.path.name})\n{job.text}")
            return 0
        if not args.replace:  # another config than the folder's fails here, not in the jobs (pipeline.layout)
            cfg, layout = _load(args.config, sub.overrides), Layout(sub.runs_dir, sub.name, args.variant)
            for seed in sub.seeds:
                check_folder(layout, seed_config(cfg, seed)[1])
        check(jobs)  # Slurm validates every request before the parent run exists or a job is queued
        parent, uri = open_parent(_load(args.config, sub.overrides), sub.runs_dir, stamp, args.tracking_uri,
                                  args.variant)
        sub.parent_run_id, sub.tracking_uri = parent, uri
        submitted = submit_jobs(render(sub))
        record(sub, submitted)
    except (SubmitError, FileNotFoundError, KeyError, ValueError) as e:
        if parent is not None:
            end_parent("FAILED", parent, uri)
        print(f"error: {e}", file=sys.stderr)
        return 2
    for job, job_id in submitted:
        tasks = f" array tasks (seeds) {','.join(map(str, job.array))}" if job.array is not None else ""
        log = job.log.replace("%A", job_id).replace("%j", job_id).replace("%a", "<seed>")
        print(f"[cluster] {job.stage:<12} job {job_id}{tasks}  log {log}")
    where = "" if args.runs_dir == Path("runs") else f" --runs-dir {args.runs_dir}"
    print(f"[cluster] MLflow parent run {parent} in {uri}; `nws cluster status -c {args.config}{where}` shows the jobs")
    return 0


def _dependency_hint(job, jobs) -> str:
    earlier = [(j, f"<{j.stage} job id>") for j in jobs[:jobs.index(job)]]
    dep = dependency(job, earlier)
    return f" --dependency={dep}" if dep else ""


def run_status(args) -> int:
    from base.layout import Layout
    from cluster.status import SlurmUnavailable, format_rows, job_rows, query_states, wait

    try:
        folder = (args.dir if args.dir else Layout(args.runs_dir, _load(args.config, []).name, args.variant).root
                  ) / "cluster"
        entries = load_record(folder)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    entries = entries if args.all else entries[-1:]
    out = []
    for entry in entries:
        ids = [j["job_id"] for j in entry["jobs"]]
        try:
            states = wait(ids, timeout=float("inf"), poll=5.0) if args.wait else query_states(ids)
        except SlurmUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        rows = job_rows(entry, states)
        out.append({**entry, "rows": rows})
        if not args.json:
            print(format_rows(entry, rows))
    if args.json:
        print(json.dumps(out, indent=2))
    return 0
