"""The pipeline on Slurm (`nws cluster submit|status`): sbatch scripts rendered from templates/, one job per stage,
seeds as job arrays, multi-node DeepSpeed pretraining under srun; `cluster.local` runs a one-node Slurm for tests."""
