"""Slurm for the pipeline (`nws cluster submit|status`, pipeline/slurm.py): sbatch scripts rendered from templates/,
one job per stage running an `nws` command, seeds as job arrays, multi-node DeepSpeed pretraining under srun; submit,
status, the MLflow server of the jobs. It imports nothing of the pipeline's commands (tests/cluster/local.py runs a
one-node Slurm for the tests)."""
