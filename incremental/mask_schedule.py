"""Learning rates of the mask methods (Piggyback, KSM) for the schedule they actually get (issue 14).

Adam normalises each step, so a parameter whose gradient keeps its sign moves about `lr` per step whatever the
gradient's size. A real-valued mask entry starts at `mask_init` and changes the network only when it crosses
`threshold`: with the official values (Piggyback 1e-2 / 5e-3 / lr 1e-4, KSM 1e-2 / 5e-3 / lr 2e-4) that takes at least
50 (25) steps at the full lr. The official schedules run thousands of steps (30 epochs of CUB, Stanford Cars, ...),
where those first steps are 1% of training. On a short schedule they are all of it: the demo with 2 epochs of 9
steps (lr ×0.1 after the first) lets an entry move 9·1e-4 + 9·1e-5 ≈ 1e-3, a fifth of the gap, so no mask entry ever
flipped and the head (same lr) moved ~1%: Piggyback and KSM stayed at chance. With 54 steps the Piggyback masks
crossed together in the last few steps, leaving no time for the head and BN to follow.

The fix scales every Adam lr of the task (masks, BN, head) by one factor `lr_scale`, the least that lets a mask entry
travel `min_travel` gaps (mask_init − threshold) over the schedule, measured as `reach` = Σ over the task's
optimizer steps of the schedule's lr factor. Long schedules keep the official lrs exactly (the factor is 1 once
lr · reach ≥ min_travel · gap: from 200 full-lr steps for Piggyback, 100 for KSM, at the default 4 gaps; the
official 30 epochs of CUB reach ~60 gaps); nothing depends on a dataset beyond its number of steps.
"""

from __future__ import annotations

from data_prep.manifest import read_unit

MIN_TRAVEL = 4.0


def steps_per_epoch(ctx, t: int) -> int:
    """Optimizer steps in one epoch of task t, as incremental.train takes them (global batch, last partial batch
    dropped unless it is the only one, at most max_steps_per_epoch)."""
    inc = ctx.cfg.incremental
    n = int(read_unit(ctx.data_dir / ctx.tasks[t].name)["splits"]["train"]["num_samples"])
    steps = max(1, n // inc.batch_size)
    return min(steps, inc.max_steps_per_epoch) if inc.max_steps_per_epoch is not None else steps


def reach(ctx, t: int) -> float:
    """Σ over task t's optimizer steps of the lr factor of their epoch: the distance, in units of the initial lr,
    an Adam parameter with a steady gradient sign can move during the task."""
    inc = ctx.cfg.incremental
    return steps_per_epoch(ctx, t) * sum(inc.lr_factor(e) for e in range(inc.epochs))


def lr_scale(lr_mask: float, gap: float, steps: float, min_travel: float) -> float:
    """The factor (>= 1) on the official lrs that lets a mask entry move `min_travel` gaps in `steps` full-lr-step
    equivalents; 1 when `min_travel` is 0 (the official lrs as given)."""
    if min_travel <= 0 or gap <= 0:
        return 1.0
    return max(1.0, min_travel * gap / (lr_mask * steps))
