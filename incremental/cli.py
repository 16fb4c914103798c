"""`nws incremental -c CONFIG [--method NAME ...] [--seed S] [--runs-dir DIR] [--variant NAME] [--replace]
[--data DIR] [--pretrain DIR] [--out DIR] [--task-inference] [--strict] [key.sub=value ...]` and
`python -m incremental ...`.

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

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """examples:
  nws incremental -c configs/demo.yaml                       # every method of incremental.methods
  nws incremental -c configs/demo.yaml --method nws --seed 1 # runs/demo/seed1/{pretrain -> incremental/nws}
  nws incremental -c configs/fmnist.yaml --method nws --method finetune incremental.epochs=5
  nws incremental -c configs/fmnist.yaml --method supsup --task-inference   # then infer the task id of test batches
  accelerate launch --multi_gpu --num_processes 4 -m incremental -c configs/split_cifar100_resnet18.yaml --method nws"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.config import add_layout_arguments

    p.add_argument("-c", "--config", required=True, type=Path, help="experiment YAML (sections name, seeds, data, "
                                                                     "model, pretrain, incremental)")
    p.add_argument("--method", action="append", default=None, metavar="NAME",
                   help="method to run (repeatable); default: incremental.methods of the config")
    add_layout_arguments(p, "incremental")
    p.add_argument("--pretrain", type=Path, default=None,
                   help="pretrain outputs (default runs/<name>/seed<S>/pretrain, or pretrain.reuse)")
    p.add_argument("--replace", action="store_true",
                   help="this config replaces the one the folder's runs were made with (runs/<name>/seed*/config.yaml "
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
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.set_defaults(func=run_cli)


def register(subparsers) -> None:
    """Adds `incremental` to the `nws` command line (pipeline/cli.py)."""
    p = subparsers.add_parser("incremental", help="learn the tasks one by one, store each, evaluate the stored models",
                              description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)


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


def run_cli(args) -> int:
    from accelerate import PartialState

    from base.ranks import is_rank_zero
    from incremental import method_names
    from incremental.chance import EXIT_CODE
    from incremental.loop import run
    from incremental.replace import drop_changed_methods
    from nws.disk import handle
    from nws.lock import folder_lock
    from nws.preempt import catch
    from pipeline.config import seed_stage_config, seed_tagged
    from pipeline.layout import pretrain_source

    catch()  # SIGUSR1 asks for a checkpoint and a stop (nws.preempt) instead of killing this process
    try:
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
    except Exception as e:  # an error with an exit code (nws.exits) ends the command in one line; others are bugs
        return handle(e, args.out or args.runs_dir or "")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m incremental", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
