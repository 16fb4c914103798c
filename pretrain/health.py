"""Is what pretraining hands on usable? A check after each kind, so that collapsed pools never pass silently.

Issue 14: a shipped config copied to a 1,400-image folder ended NWS pretraining at 10% test accuracy (chance), every
3×3 layer on 1-2 of its 64 pool kernels (KUR 0.02), and the pipeline went on to learn every task on those pools.
Two symptoms, each checked against the outputs as rebuilt from the stored files:

- per NWS layer, the kernel utilisation rate (KUR, seed 004_ §5.7: the fraction of the pool's kernels that the
  stored indices select), relative to what the layer can reach (a layer of N kernels uses at most min(N, n) of n):
  under `health.min_kur` the layer is degenerate. Reported with it: the share of pool kernels the distiller's EMA
  counts as dead, and the quantisation error relative to the kernels' mean squared norm (1 = no better than zero);
- the test accuracy against chance: under H0 each of the n test images is right with probability 1/classes, so the
  correct count is Binomial(n, 1/classes) and its one-sided p-value P(X >= k) (the test of incremental/chance.py);
  p >= `health.alpha` means not significantly above chance (for `nws` and `plain` alike).

A degenerate result stops `nws pretrain` with exit code EXIT_CODE (and so the pipeline) before the `complete` file
is written, naming the layers and what to change; `--allow-degenerate` or `pretrain.allow_degenerate` keeps it. A
run that trained on fewer images than one epoch holds (a smoke test cut by max_steps_per_epoch) or for fewer than
`health.min_steps` optimizer steps is not expected to have learnt anything yet: a smoke test of the machinery, it is
checked and warned about, never stopped.
"""

from __future__ import annotations

from scipy.stats import binomtest

from nws import exits

EXIT_CODE = exits.DEGENERATE  # `nws pretrain`, `nws pipeline run` (nws.exits)


class DegeneratePretraining(RuntimeError):
    """The health check found degenerate outputs (the message names the kinds, layers and what to change)."""

    EXIT_CODE = exits.DEGENERATE


def chance_p_value(correct: int, n: int, classes: int) -> float:
    """P(X >= correct) for X ~ Binomial(n, 1/classes); 1.0 when there is nothing to test (no images, one class)."""
    if n < 1 or classes < 2:
        return 1.0
    return float(binomtest(correct, n, 1.0 / classes, alternative="greater").pvalue)


def layer_health(r: dict, min_kur: float) -> dict:
    """One layer of pretrain.loop.layer_report, judged: KUR relative to the reachable min(1, kernels / pool size)."""
    reachable = min(1.0, r["kernels"] / r["pool_size"])
    relative = r["utilisation"] / reachable
    out = {"kur": r["utilisation"], "used": r["used"], "pool_size": r["pool_size"], "kur_relative": relative,
           "relative_quantisation_error": r["relative_quantisation_error"], "degenerate": relative < min_kur}
    if "dead_share" in r:
        out["dead_share"] = r["dead_share"]
    return out


def check(summary: dict, cfg) -> dict:
    """The health of one kind from its summary (summary_<kind>.json: test_accuracy, eval_images, num_classes,
    steps, images, epoch_images, and for `nws` layers), judged with `cfg` (pretrain.config.HealthConfig)."""
    n, classes = summary["eval_images"], summary["num_classes"]
    correct = round(summary["test_accuracy"] * n)
    p = chance_p_value(correct, n, classes)
    layers = {name: layer_health(r, cfg.min_kur) for name, r in summary.get("layers", {}).items()}
    bad = sorted(name for name, h in layers.items() if h["degenerate"])
    health = {
        "test_accuracy": summary["test_accuracy"], "correct": correct, "eval_images": n, "num_classes": classes,
        "chance": 1.0 / classes, "p_value": p, "at_chance": classes > 1 and p >= cfg.alpha,
        "degenerate_layers": bad, "min_kur": cfg.min_kur, "alpha": cfg.alpha,
        # a smoke run (less than one epoch of training, or a handful of steps) is warned about, not stopped
        "smoke_run": summary["images"] < summary["epoch_images"] or summary["steps"] < cfg.min_steps,
    }
    if layers:
        health["kur_relative_min"] = min(h["kur_relative"] for h in layers.values())
        health["layers"] = layers
    health["degenerate"] = health["at_chance"] or bool(bad)
    return health


def problems(kind: str, health: dict) -> list[str]:
    """One line per problem: which kind, which layer, the numbers."""
    lines = [f"{kind} {name}: {h['used']} of {h['pool_size']} pool kernels used (KUR {h['kur']:.2f}; "
             f"{h['kur_relative']:.2f} of what the layer can use, under pretrain.health.min_kur={health['min_kur']})"
             for name in health["degenerate_layers"] for h in [health["layers"][name]]]
    if health["at_chance"]:
        lines.append(f"{kind}: test accuracy {100 * health['test_accuracy']:.1f}% on {health['eval_images']} images "
                     f"is not above chance ({100 * health['chance']:.1f}%, one-sided binomial p="
                     f"{health['p_value']:.2g} >= pretrain.health.alpha={health['alpha']})")
    return lines


def advice(healths: dict[str, dict], pool_init: str | None) -> str:
    """What to change, from what went wrong."""
    collapsed = any(h["degenerate_layers"] for h in healths.values())
    if collapsed and pool_init == "normal":
        return ("the N(0, 1) pools sit far from the kernels they serve: try pretrain.pool_init=kmeans (or more steps, "
                "a smaller pretrain.distill.restart_every)")
    if collapsed:
        return "try more steps or a smaller pretrain.distill.restart_every"
    return "try more epochs or another pretrain.lr; a small training set may need pretrain.batch_size lower"


def metrics(health: dict) -> dict[str, float]:
    """What MLflow gets of a kind's health (the pretrain run's metrics `health.*`)."""
    out = {"health.degenerate": float(health["degenerate"]), "health.p_value": health["p_value"],
           "health.degenerate_layers": float(len(health["degenerate_layers"]))}
    if "kur_relative_min" in health:
        out["health.kur_relative_min"] = health["kur_relative_min"]
    return out


def verdict(healths: dict[str, dict], pool_init: str | None, allowed: bool) -> tuple[list[str], bool]:
    """(the problem lines of every kind, ending with what to change; whether the stage must stop): it stops on a
    degenerate kind that is not a smoke run, unless degenerate outputs are allowed."""
    lines = [line for kind, h in healths.items() for line in problems(kind, h)]
    if lines:
        lines.append(advice(healths, pool_init))
    stop = not allowed and any(h["degenerate"] and not h["smoke_run"] for h in healths.values())
    return lines, stop


def stop_message(lines: list[str]) -> str:
    return ("degenerate pretraining outputs (pretrain.json written, the stage not marked complete):\n  "
            + "\n  ".join(lines) + "\nor rerun the same command with --allow-degenerate (or pretrain.allow_degenerate="
            "true) to keep these outputs: the finished training is not repeated")
