"""The incremental stage: learn the tasks of tasks.json one after another with a continual-learning method (NWS,
seed 004_ Algorithm 1, and the baselines), store every task as files, and evaluate every stored task model after
each task. Entry points: `nws incremental`, `python -m pipeline incremental` (pipeline/cli.py); the loop is
incremental.loop.run and the methods are plug-ins in incremental/methods/."""
