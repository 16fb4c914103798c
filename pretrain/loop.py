"""The pretraining loop of one kind: `nws` distils the layer-wise pools (seed 004_ §4.2, Eq. 3/4), `plain` trains the
float backbone the baselines start from (same architecture, data and schedule, no NWS).

Per micro-batch: forward under the engine's autocast; loss = CE + beta × Σ_l mean((sg[K_l] - W_l)^2) (Eq. 2 summed
over layers, nws.search_loss — never silently zero, unlike the official pool pretraining, notes §1.3); the non-finite
guard (base.training, as the task loop's); backward. At each optimizer step the EMA pool update (nws.PoolDistiller,
once per step as in the official code). Checkpoints every `checkpoint_every` steps and at every epoch end, and after
the step at which a rank caught SIGUSR1 (nws.preempt: Slurm's warning before the time limit), where it then stops
(Preempted); the same call resumes from the latest one, skipping the micro-batches of the epoch it had already
consumed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import nws
from base import training
from base.layout import CHECKPOINTS
from nws.distill import restart_period
from nws.io import load_tensors
from nws.pools import quantisation_error
from nws.preempt import Preempted, requested, stopping
from nws.stats import kernel_utilisation
from pretrain import checkpoint
from pretrain.data import train_loader
from pretrain.engine import batch_plan, build_engine, lr_at
from pretrain.global_bn import use_global_batchnorm
from pretrain.recalibrate import recalibrate_batchnorm

# the per-layer pool statistics logged to MLflow at every epoch end
EPOCH_METRICS = ("utilisation", "quantisation_error", "relative_quantisation_error", "dead_share")


@dataclass
class Job:
    """Everything a kind's training needs to know, resolved once by pretrain.run."""

    cfg: object  # the Experiment (sections name, seeds, data, model, pretrain)
    data_dir: Path
    out_dir: Path
    num_classes: int
    config_hash: str
    resolved: dict
    rank: int = 0
    world_size: int = 1
    runs_dir: Path = Path("runs")
    replace_changed: bool = False  # checkpoints of another config are removed (the pipeline), not refused
    seed: int = field(init=False)

    def __post_init__(self):
        self.seed = self.cfg.seeds[0]


def checkpoint_dir(job: Job, kind: str) -> Path:
    return job.out_dir / CHECKPOINTS / kind


def build_model(kind: str, job: Job) -> nn.Module:
    """The float network (seeded, identical on every rank); for `nws` converted with its pools; BatchNorm over the
    global batch when `pretrain.sync_batchnorm` and several ranks."""
    p = job.cfg.pretrain
    net = _build_model(kind, job)
    return use_global_batchnorm(net) if p.sync_batchnorm and job.world_size > 1 else net


def _build_model(kind: str, job: Job) -> nn.Module:
    p, m = job.cfg.pretrain, job.cfg.model
    torch.manual_seed(job.seed)
    net = m.build(job.num_classes)
    if kind == "plain":
        return net
    if p.warm_start:
        try:
            net.load_state_dict(load_tensors(p.warm_start))
        except RuntimeError as e:
            raise ValueError(f"{p.warm_start}: not a plain backbone of {m.arch} (width {m.width}, "
                             f"{job.num_classes} classes): {e}") from None
    return nws.convert(net, pool_size=m.pool_size, pool_init=p.pool_init, linear_group_size=m.linear_group_size,
                       seed=job.seed)


def layer_report(model: nn.Module, distiller=None) -> dict[str, dict[str, float]]:
    """Per NWS layer, for the indices searched afresh in the current pools (the ones nws.export_indices stores): pool
    utilisation (KUR, the fraction of the pool's kernels in use, §5.7), the pool kernels in use, the layer's kernels
    and pool size, the quantisation error (mean squared distance of a temporary kernel to its searched kernel) and
    the same relative to the kernels' mean squared norm (1.0 = no better than a pool holding only the zero kernel),
    and with the distiller the share of pool kernels its EMA counts as dead (pretrain/health.py reads them)."""
    dead = distiller.dead_share() if distiller is not None else {}
    report = {}
    for name, layer in nws.nws_layers(model):
        idx, flat = layer.search_(), layer.flat_weight().detach().float()
        error = quantisation_error(flat, layer.pool)
        report[name] = {"utilisation": kernel_utilisation(idx, layer.pool_size),
                        "used": int(torch.unique(idx).numel()), "kernels": int(idx.numel()),
                        "pool_size": layer.pool_size, "quantisation_error": error,
                        "relative_quantisation_error": error / max(float((flat ** 2).sum(1).mean()), 1e-30)}
        if name in dead:
            report[name]["dead_share"] = dead[name]
    return report


@torch.no_grad()
def pool_update(distiller) -> None:
    """The EMA pool update of one optimizer step (nws.PoolDistiller.step). Its statistics depend on W and the pools
    only, so it is the same on every rank and for any gradient accumulation: one step of 1 rank and 1 forward."""
    distiller.step()


@torch.no_grad()
def drop_pending_pool_statistics(distiller) -> None:
    """Forget what a skipped forward accumulated for the EMA pool update (nws.distill.PoolDistiller): the skipped
    step leaves no trace in the pools either (base.training's guard)."""
    distiller.discard()


PROGRESS_SECONDS = 30.0  # the least time between two progress lines on the console


class Window:
    """Sums over a logging window (loss, ce, search, correct, samples), reduced over ranks when logged."""

    def __init__(self):
        self.sums = torch.zeros(5, dtype=torch.float64)
        self.micro, self.start = 0, time.perf_counter()

    def add(self, loss, ce, search, logits, y):
        values = torch.stack([t.detach().float() for t in (loss, ce, search, (logits.argmax(1) == y).sum())])
        self.sums[:4] += values.double().cpu()
        self.sums[4] += y.numel()
        self.micro += 1

    def metrics(self, world_size: int) -> dict[str, float]:
        sums = self.sums.clone()
        if world_size > 1:
            dist.all_reduce(sums)
        n = max(self.micro * world_size, 1)
        seconds = max(time.perf_counter() - self.start, 1e-9)
        return {"loss": sums[0].item() / n, "ce": sums[1].item() / n, "search": sums[2].item() / n,
                "train_acc": sums[3].item() / max(sums[4].item(), 1), "images_per_s": sums[4].item() / seconds}


class Trainer:
    """One kind's engine, pools, data and position; `fit()` runs the remaining epochs."""

    def __init__(self, kind: str, job: Job, tracker):
        self.kind, self.job, self.tracker = kind, job, tracker
        self.p = p = job.cfg.pretrain
        self.plan = batch_plan(p, job.world_size)
        self.engine, self.optimizer = build_engine(build_model(kind, job), p, self.plan)
        self.model = self.engine.module
        self.layers = dict(nws.nws_layers(self.model))
        if p.debug.nonfinite_steps and p.debug.nonfinite_term not in ("ce", *self.layers):
            raise ValueError(f"pretrain.debug.nonfinite_term={p.debug.nonfinite_term!r} is neither 'ce' nor an NWS "
                             f"layer ({', '.join(self.layers) or 'none in a plain network'})")
        self.loader = train_loader(job.data_dir, job.cfg.data, p, self.plan.micro_batch, job.seed, job.rank,
                                   job.world_size)
        self.per_epoch = self._micro_batches_per_epoch()
        self.total_steps = p.epochs * self.per_epoch // self.plan.accumulation
        self.restart_every = p.distill.restart_every or restart_period(self.total_steps, p.distill.decay)
        # created after deepspeed.initialize, which may move the module: the EMA state lives with the pools
        distill = {**p.distill.model_dump(), "restart_every": self.restart_every}
        self.distiller = nws.PoolDistiller(self.model, **distill, seed=job.seed) if kind == "nws" else None
        self.ckpt_dir = checkpoint_dir(job, kind)
        state = checkpoint.load(self.engine, self.ckpt_dir, self.distiller)
        if state is not None and state.config_hash != job.config_hash:
            raise ValueError(f"{self.ckpt_dir}: checkpoints of another config (hash {state.config_hash}, now "
                             f"{job.config_hash}); use another --out or delete that folder to start over")
        self.state = state or checkpoint.TrainState(config_hash=job.config_hash)
        if state is not None and job.rank == 0:
            print(f"[pretrain {kind}] resumed from checkpoint {state.tag} (step {state.step}/{self.total_steps})",
                  flush=True)
        self.guard = training.NonFiniteGuard(p.max_consecutive_skips, skipped=self.state.skipped)
        self._printed = -float("inf")  # when the last progress line was printed (rank 0)
        self.bn = training.batchnorm_buffers(self.model)

    def _micro_batches_per_epoch(self) -> int:
        """Whole optimizer steps only, so no accumulation window straddles two epochs."""
        acc = self.plan.accumulation
        n = len(self.loader) // acc * acc
        if self.p.max_steps_per_epoch:
            n = min(n, self.p.max_steps_per_epoch * acc)
        if n == 0:
            raise ValueError(f"a rank's share of the data ({self.loader.num_samples} images) is smaller than one "
                             f"optimizer step ({self.plan.micro_batch} × {acc}); lower pretrain.batch_size")
        return n

    def fit(self) -> checkpoint.TrainState:
        try:
            for epoch in range(self.state.epoch, self.p.epochs):
                self._epoch(epoch)
        finally:
            if self.distiller is not None:
                self.distiller.detach()
        return self.state

    def recalibrate(self) -> int:
        """The final NWS network's BatchNorm statistics, re-estimated on its frozen searched kernels over up to
        `recalibrate_bn` training micro-batches per rank (pretrain/recalibrate.py); returns the batches used. The
        same batches on every resume (the loader's order depends on the seed and the epoch only)."""
        n = min(self.p.recalibrate_bn, self.per_epoch)
        if self.kind != "nws" or n == 0:
            return 0
        self.loader.set_epoch(self.p.epochs)
        batches = (b for i, b in zip(range(n), self.loader, strict=False))
        used = recalibrate_batchnorm(self.model, batches, self.engine.device)
        training.sync_batchnorm_statistics(self.model, self.job.world_size)
        return used

    def _save(self) -> None:
        training.sync_batchnorm_statistics(self.model, self.job.world_size)
        checkpoint.save(self.engine, self.ckpt_dir, self.state, self.distiller, self.p.keep_checkpoints,
                        self.job.rank)

    def _epoch(self, epoch: int) -> None:
        st = self.state
        lr = lr_at(self.p, epoch)
        training.set_lr(self.optimizer, lr)
        self.loader.set_epoch(epoch)
        self.model.train()
        window, tick = Window(), time.perf_counter()
        for i, (x, y) in enumerate(self.loader):
            if i >= self.per_epoch:
                break
            if i < st.batch:  # consumed before the checkpoint this run resumed from
                continue
            stepped = self._micro_step(x.to(self.engine.device), y.to(self.engine.device), window)
            st.batch = i + 1
            if not stepped:
                continue
            if st.step % self.p.log_every == 0:
                self._log(window.metrics(self.job.world_size), lr, epoch)
                window = Window()
            saved = bool(self.p.checkpoint_every) and st.step % self.p.checkpoint_every == 0
            if saved:
                st.seconds += time.perf_counter() - tick
                self._save()
                tick = time.perf_counter()
            if self._signalled():
                if not saved:
                    st.seconds += time.perf_counter() - tick
                    self._save()
                stopping()
                raise Preempted(f"[pretrain {self.kind}] SIGUSR1: checkpoint {st.tag} written at step {st.step}/"
                                f"{self.total_steps}; the same command resumes from it")
        st.seconds += time.perf_counter() - tick
        st.epoch, st.batch = epoch + 1, 0
        if self.kind == "nws" and self.job.rank == 0:
            self.tracker.log_metrics({f"{key}/{name}": value
                                      for name, r in layer_report(self.model, self.distiller).items()
                                      for key, value in r.items() if key in EPOCH_METRICS}, step=st.step)
        self._save()

    def _signalled(self) -> bool:
        """Whether any rank caught SIGUSR1: every rank stops after the same step, since the checkpoint is
        collective (a one-number all-reduce per optimizer step)."""
        flag = torch.tensor([float(requested())], device=self.engine.device)
        if self.job.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _micro_step(self, x: torch.Tensor, y: torch.Tensor, window: Window) -> bool:
        """Forward, guard, backward, and at an accumulation boundary the optimizer and pool updates. Returns
        whether an optimizer step was applied."""
        st, p = self.state, self.p
        saved = training.snapshot(self.bn)
        logits = self.engine(x)
        ce = F.cross_entropy(logits.float(), y)
        ce = self._inject(ce)
        bad = self.guard.bad_terms({"ce": ce, **{name: layer.diff for name, layer in self.layers.items()}})
        st.micro += 1
        if bad:
            training.restore(self.bn, saved)
            if self.distiller is not None:
                drop_pending_pool_statistics(self.distiller)
            if self.guard.skip():
                raise training.NonFiniteLoss(
                    f"{self.guard.consecutive} consecutive non-finite steps, the last at step {st.step}: "
                    f"non-finite term(s) {', '.join(bad)}; stopping (the last checkpoint is intact: "
                    "lower the lr, enable grad_clip or check the data, then run again)")
            st.skipped = self.guard.skipped
            if self.job.rank == 0:
                print(f"[pretrain {self.kind}] non-finite loss at step {st.step}: {', '.join(bad)} (step skipped)",
                      flush=True)
                self.tracker.log_metrics({"skipped_steps": st.skipped}, step=st.step)
            return False
        self.guard.ok()
        search = nws.search_loss(self.model) if self.kind == "nws" else torch.zeros((), device=ce.device)
        loss = ce + p.beta * search
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.backward(loss)
        self.engine.step()
        window.add(loss, ce, search, logits, y)
        if not boundary:
            return False
        if self.distiller is not None:
            pool_update(self.distiller)
        st.step += 1
        st.images += self.plan.global_batch
        return True

    def _inject(self, ce: torch.Tensor) -> torch.Tensor:
        """The guard's test hook (pretrain.debug): one term made inf at the configured micro-batches."""
        debug = self.p.debug
        if self.state.micro not in debug.nonfinite_steps:
            return ce
        if debug.nonfinite_term == "ce":
            return ce + float("inf")
        layer = self.layers[debug.nonfinite_term]
        layer.diff = layer.diff + float("inf")
        return ce

    def _log(self, metrics: dict[str, float], lr: float, epoch: int) -> None:
        metrics.update(lr=lr, epoch=epoch, skipped_steps=self.state.skipped)
        if self.distiller is not None:
            metrics["restarts"] = sum(self.distiller.restarts.values())
            metrics["utilisation_mean"] = sum(kernel_utilisation(v.indices, v.pool_size)
                                              for v in self.layers.values()) / len(self.layers)
        self.tracker.log_metrics(metrics, step=self.state.step)
        self._progress(metrics, epoch)

    def _progress(self, metrics: dict[str, float], epoch: int) -> None:
        """A console line on rank 0 at log points, at most every PROGRESS_SECONDS (issue 19: a pretraining printed
        nothing between its start and its final accuracy, for hours in a Slurm log): step, epoch, loss, training
        accuracy, throughput and the time left at this run's pace."""
        now, st = time.perf_counter(), self.state
        if self.job.rank != 0 or (now - self._printed < PROGRESS_SECONDS and st.step < self.total_steps):
            return
        self._printed = now
        left = (self.total_steps - st.step) * self.plan.global_batch / max(metrics["images_per_s"], 1e-9)
        print(f"[pretrain {self.kind}] step {st.step}/{self.total_steps} (epoch {epoch + 1}/{self.p.epochs}): "
              f"loss {metrics['loss']:.4f}, ce {metrics['ce']:.4f}, train acc {100 * metrics['train_acc']:.1f}%, "
              f"{metrics['images_per_s']:.0f} img/s, lr {metrics['lr']:.3g}, about {_duration(left)} left",
              flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def train(kind: str, job: Job, tracker) -> tuple[nn.Module, checkpoint.TrainState, dict]:
    """Train one kind to the end (resuming when checkpoints exist), logging to `tracker` (base.tracking), then
    re-estimate the NWS network's BatchNorm statistics; returns the trained module, the final state and the report:
    the images of one epoch, and for `nws` the dead-kernel restart period, the recalibration batches and the
    per-layer pool report."""
    trainer = Trainer(kind, job, tracker)
    state = trainer.fit()
    # the images of one uncut epoch (all ranks): a run that trained on fewer is a smoke run (pretrain/health.py)
    report = {"epoch_images": len(trainer.loader) // trainer.plan.accumulation * trainer.plan.global_batch}
    if kind == "nws":
        report.update(restart_every=trainer.restart_every, recalibrated_batches=trainer.recalibrate(),
                      layers=layer_report(trainer.model, trainer.distiller))
    return trainer.model, state, report
