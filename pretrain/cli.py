"""`nws pretrain -c CONFIG [--seed S] [--runs-dir DIR] [--variant NAME] [--replace] [--data DIR] [--out DIR]
[key.sub=value ...]` and `python -m pretrain ...`.

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

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  nws data prepare -c configs/demo.yaml && nws pretrain -c configs/demo.yaml   # runs/demo/seed0/pretrain
  nws pretrain -c configs/demo.yaml pretrain.kind=both pretrain.epochs=5
  nws pretrain -c configs/fmnist.yaml --seed 1 --runs-dir /scratch/runs    # /scratch/runs/fmnist/seed1/pretrain
  DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 -m pretrain -c configs/demo.yaml
  deepspeed --num_gpus 8 --module pretrain -c configs/imagenet_pools_resnet18.yaml --data /data/imagenet
  srun --ntasks-per-node 8 python -m pretrain -c configs/imagenet_pools_resnet18.yaml"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.config import add_layout_arguments

    p.add_argument("-c", "--config", required=True, type=Path, help="experiment YAML (sections name, seeds, data, "
                                                                     "model, pretrain)")
    add_layout_arguments(p, "pretrain")
    p.add_argument("--allow-degenerate", action="store_true",
                   help="keep outputs the health check finds degenerate (collapsed pools, accuracy at chance) and mark "
                        "the stage complete instead of exiting with code 5 (also: pretrain.allow_degenerate=true)")
    p.add_argument("--replace", "--replace-changed", dest="replace", action="store_true",
                   help="this config replaces the one the folder's runs were made with (runs/<name>/seed*/config.yaml "
                        "differs: refused without it) and checkpoints left in the output folder by another "
                        "configuration are removed, that training starting over (nws pipeline run passes it: there "
                        "the config is the truth)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.set_defaults(func=run_cli)


def register(subparsers) -> None:
    """Adds `pretrain` to the `nws` command line (pipeline/cli.py)."""
    p = subparsers.add_parser("pretrain", help="distil the layer-wise kernel pools (DeepSpeed, bf16, resumable)",
                              description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)


def run_cli(args) -> int:
    from base.ranks import is_rank_zero
    from nws.disk import handle
    from nws.lock import folder_lock
    from nws.preempt import catch
    from pipeline.config import seed_stage_config, seed_tagged
    from pretrain.run import run

    catch()  # SIGUSR1 asks for a checkpoint and a stop (nws.preempt) instead of killing this rank
    try:  # a ConfigError is a ValueError: exit 2 like every other bad input
        cfg, layout, seed = seed_stage_config(args)
        data, out = args.data or layout.data, args.out or layout.pretrain(seed)
        with seed_tagged(seed), folder_lock(out, enabled=is_rank_zero()):  # one writer of the folder (nws.lock)
            run(cfg, data, out, runs_dir=layout.runs_dir, allow_degenerate=args.allow_degenerate,
                replace_changed=args.replace)
    except Exception as e:  # an error with an exit code (nws.exits) ends the command in one line; others are bugs
        return handle(e, args.out or args.runs_dir or "")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
