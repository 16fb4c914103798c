"""Learning rates of the mask methods (Piggyback, KSM) for the schedule they actually get (issue 14).

Adam normalises each step, so a parameter whose gradient keeps its sign moves about `lr` per step whatever the
gradient's size. A real-valued mask entry starts at `mask_init` and changes the network only when it crosses
`threshold`: with the official values (Piggyback 1e-2 / 5e-3 / lr 1e-4, KSM 1e-2 / 5e-3 / lr 2e-4) that takes at least
50 (25) steps at the full lr. The official schedules run thousands of steps (30 epochs of CUB, Stanford Cars, ...),
where those first steps are 1% of training. On a short schedule they are all of it: the demo with 2 epochs of 9
steps (lr ×0.1 after the first) lets an entry move 9·1e-4 + 9·1e-5 ≈ 1e-3, a fifth of the gap, so no Piggyback mask
entry ever flipped and the head (same lr) moved ~1%: the stored tasks sat near chance (54.5% on average).

So every lr left at its default (masks, BN, head) is multiplied by one factor `lr_scale`, the least that lets a mask
entry travel `min_travel` gaps (mask_init − threshold) over the task: lr_mask · reach ≥ min_travel · gap, with reach
= Σ over the task's optimizer steps of the schedule's lr factor (incremental.schedule.TaskSchedule.reach). Long
schedules keep the official lrs exactly (the factor is 1 from 200 full-lr steps for Piggyback, 100 for KSM, at the
default 4 gaps; the official 30 epochs of CUB reach ~60 gaps); an lr given in the config is taken as given; nothing
depends on a dataset beyond its number of steps. min_travel 4: on the test fixture 2, 4, 8 and 16 gaps all gave
97-99% (0: 54%); on the demo's 18 steps 4 gaps gave Piggyback 98.3%, KSM 100%.
"""

from __future__ import annotations

MIN_TRAVEL = 4.0


def lr_scale(lr_mask: float, gap: float, reach: float, min_travel: float) -> float:
    """The factor (>= 1) on the default lrs that lets a mask entry move `min_travel` gaps over a schedule of `reach`
    full-lr-step equivalents; 1 when `min_travel` is 0 (the lrs as given)."""
    if min_travel <= 0 or gap <= 0 or reach <= 0:
        return 1.0
    return max(1.0, min_travel * gap / (lr_mask * reach))
