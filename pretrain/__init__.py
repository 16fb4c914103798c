"""The pretrain stage: distil the layer-wise kernel pools (seed 004_ §4.2, Eq. 3/4) with DeepSpeed in bf16, and
train the plain float backbone the baselines start from. Entry points: `nws pretrain`, `python -m pipeline pretrain`
(pipeline/cli.py); the stage itself is pretrain.run.run."""
