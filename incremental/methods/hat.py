"""HAT, Hard Attention to the Task (Serra et al., ICML 2018; official code joansj/hat) as a method of the task loop.

- One shared network: every conv/linear weight but the per-task head (methods._masked_net), starting from the
  plain pretrained backbone and trained task after task. Task t learns an embedding e_t per unit (conv channel,
  hidden linear unit; incremental.methods._hat_gates says where the gates go in a ResNet block) and multiplies
  each unit by its gate a = σ(s·e) (Eq. 1). Embeddings start N(0, 1) (official nn.Embedding).
- s is annealed over each epoch's batches from 1/s_max to s_max (Eq. 3; official train_epoch:
  s = 1/s_max + (s_max - 1/s_max)·b/B, batch b of B), and is s_max at evaluation, as the official eval.
- Loss: cross-entropy + c · Σ a_t(1 - a_<t) / Σ (1 - a_<t) over all units (Eq. 5; official criterion), a_<t the
  cumulative attention max(a_0, ..., a_{t-1}) at s_max of the earlier tasks, read from their stored embeddings.
- Before each step: the gradient of a shared weight w_ij is scaled by 1 - min(a_<t,i, a_<t,j) (Eq. 2; official
  mask_back, tasks t > 0); the embeddings' gradients are compensated, × s_max/s · (cosh(clamp(s·e, ±thres_cosh)) + 1)
  / (cosh(e) + 1) (Eq. 4); then every gradient is clipped to norm `clipgrad`. After it the embeddings are clamped to
  ±thres_emb.
- BatchNorm (the official nets have none) and the head are per task, BN trained from the pretrained values, its
  statistics re-estimated at the end of the task (methods._bn_stats) with the gates at s_max.

Protection is exact only where the gates are: a weight between units earlier tasks attend to with a = 1 gets no
update at all (bit for bit, also under weight decay and momentum: see `before_step`), and a unit with a = 0 feeds
nothing to that task. Between 0 and 1 (torch's float32 σ(400·e) is exactly 1 for e >= 0.0416 and exactly 0 for
e <= -0.222) updates are only scaled down, so an earlier task may move: `task_report` counts those units and the
weights they leave unprotected, and the accuracy matrix measures the drift (tests/incremental/test_hat.py: task 0
bit-identical after task 1 when its gates are binary; with the gates 18 steps leave, 21-41 of 488 units
fractional, its logits moved by 2e-4 relative after task 1 and 2e-3 after task 2, one test image of 72 changing).

Official defaults (src/approaches/hat.py `Appr.__init__` and `train_epoch`, src/run.py): lamb (c) 0.75, smax 400,
thres_cosh 50, thres_emb 6, clipgrad 10000, SGD lr 0.05 without momentum or weight decay (run.py `--lr`), batch
64 and nepochs 200 (run.py) with the lr divided by 3 after 5 epochs without a better validation loss, stopping
under lr_min 1e-4 and keeping the best validation model. The loop has no validation split: the lr follows
`incremental.milestones` and the batch `incremental.batch_size`; recipe "paper" trains with the shared SGD
(incremental.methods).

Storage: shared, counted once: `network.safetensors` (float32 shared weights, overwritten after every task and
staged like Sequential's backbone, incremental.stored). Per task: `embeddings.safetensors` (float32 e_t per unit:
the official model keeps the embeddings and evaluates σ(s_max·e), not binarised gates) and `state.safetensors`
(BN + head). Task t is rebuilt from the shared network as it is now, its embeddings at s_max, its BN and head.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from incremental.methods import Method, MethodOptions
from incremental.methods._backbone import check_plain, load_plain
from incremental.methods._bn_stats import DEFAULT_BATCHES, recalibrate_task
from incremental.methods._hat_gates import HAT, attach, condition, gates_of, plan
from incremental.methods._masked_net import assemble, bare, masked_params, task_state
from incremental.stored import StoredTaskError, is_sealed, staged_path
from nws.io import load_metadata, load_tensors, save_tensors

NETWORK = "network.safetensors"
EMBEDDINGS = "embeddings.safetensors"
STATE = "state.safetensors"


class Options(MethodOptions):
    """`incremental.options.hat` (official names and defaults, src/approaches/hat.py)."""

    lamb: float = Field(0.75, ge=0)  # c of Eq. 5 (grid 0.1-4, chosen 0.75)
    smax: float = Field(400.0, gt=1)  # s_max of Eq. 3 (grid 25-800, chosen 400)
    thres_cosh: float = Field(50.0, gt=0)  # clamp of s·e in the compensation's cosh (Eq. 4)
    thres_emb: float = Field(6.0, gt=0)  # embeddings clamped to ±thres_emb after each step
    clipgrad: float = Field(10000.0, gt=0)  # gradient norm clipping
    lr: float = Field(0.05, gt=0)  # the official SGD's lr (recipe "official")
    bn_batches: int = Field(DEFAULT_BATCHES, ge=0)  # batches that re-estimate BN statistics at the end; 0 = none


class HardAttention(Method):
    name = "hat"
    Options = Options
    ignores = ("beta", "head", "codec")  # recipe "paper" replaces its SGD without momentum
    recipe_keys = ("lr",)

    def __init__(self, ctx):
        super().__init__(ctx)
        self.task, self.batch = -1, 0
        self.a_prev: dict[str, torch.Tensor] = {}  # cumulative attention of the tasks before `task`, at s_max
        self.start: dict[str, torch.Tensor] = {}  # the shared weights when the task started
        self.back: dict[str, torch.Tensor] = {}  # {weight: 1 - min(a_i, a_j)} (Eq. 2)
        self._dev: tuple | None = None

    @property
    def network_path(self) -> Path:
        return self.ctx.method_dir / NETWORK

    def prepare(self) -> None:
        """Before any task is stored, the shared network is the plain backbone's (and a network HAT can gate)."""
        check_plain(self.ctx)
        net = load_plain(self.ctx, 1)
        plan(net)
        if any(is_sealed(self.ctx.task_dir(t)) for t in range(len(self.ctx.tasks))):
            return
        weights = {n: p.detach().clone() for n, p in masked_params(net).items()}
        save_tensors(self.network_path, weights, metadata={"content": "shared weights", "tasks": "0"})

    def shared_files(self) -> dict[str, list[Path]]:
        return {"network": [self.network_path]}

    def attention(self, tasks, spec) -> dict[str, torch.Tensor]:
        """max over `tasks` of their gates σ(s_max·e) from the stored embeddings (zeros for no task)."""
        a = {name: torch.zeros(units) for name, (_, units) in spec.gates.items()}
        for k in tasks:
            path = self.ctx.task_dir(k) / EMBEDDINGS
            emb, s_max = load_tensors(path), float(load_metadata(path)["smax"])
            if {n: e.numel() for n, e in emb.items()} != {n: v.numel() for n, v in a.items()}:
                raise StoredTaskError(f"{path}: embeddings do not fit the configured network's units")
            a = {n: torch.maximum(v, torch.sigmoid(s_max * emb[n])) for n, v in a.items()}
        return a

    # ----- training -----

    def schedule(self, t: int):
        sched = self.ctx.schedule
        return sched if sched is not None and sched.task == t else self.ctx.schedule_for(t)

    def setup_task(self, t: int) -> nn.Module:
        """The shared network as task t-1 left it, the pretrained BN, a fresh head and fresh embeddings."""
        net = load_plain(self.ctx, self.ctx.tasks[t].num_classes)
        spec, params, values = plan(net), masked_params(net), load_tensors(self.network_path)
        if set(values) != set(params) or set(spec.views) != set(params):
            raise StoredTaskError(f"{self.network_path}: layers {sorted(values)} do not match the configured network")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(values[n])
        attach(net, {name: torch.randn(units) for name, (_, units) in spec.gates.items()}, self.opts.smax)
        self.task, self.start, self._dev = t, values, None
        self.a_prev = self.attention(range(t), spec)
        self.back = condition(self.a_prev, spec.views, {n: v.shape for n, v in values.items()})
        self.set_batch(net, 0)
        return net

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Shared weights, embeddings, the rest (BN, head). The first two have no weight decay of the optimizer:
        the shared weights' decay is added to their gradient before Eq. 2 scales it (`before_step`), so a weight
        earlier tasks fully use stays put; the embeddings have Eq. 5 and the clamp instead (official: no decay)."""
        net = bare(model)
        shared, emb = list(masked_params(net).values()), list(gates_of(net).parameters())
        taken = {id(p) for p in shared + emb}
        rest = [p for p in net.parameters() if p.requires_grad and id(p) not in taken]
        return [{"params": shared, "weight_decay": 0.0}, {"params": emb, "weight_decay": 0.0}, {"params": rest}]

    def official_optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        """Official `_get_optimizer`: SGD(lr) without momentum or weight decay."""
        return torch.optim.SGD(groups, lr=self.opts.lr)

    def s_at(self, b: int) -> float:
        """Eq. 3 at batch b of the epoch (official: s = (s_max - 1/s_max)·i/N + 1/s_max, i the batch's first
        sample of N; here b/B over the epoch's B batches)."""
        s_max = self.opts.smax
        return 1 / s_max + (s_max - 1 / s_max) * b / self.schedule(self.task).steps_per_epoch

    def set_batch(self, model: nn.Module, b: int) -> None:
        self.batch = b
        gates_of(model).s = self.s_at(b)

    def _on(self, device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(a_prev, back) on `device`, cached."""
        if self._dev is None or self._dev[0] != device:
            self._dev = (device, {n: v.to(device) for n, v in self.a_prev.items()},
                         {n: v.to(device) for n, v in self.back.items()})
        return self._dev[1], self._dev[2]

    def extra_loss(self, model: nn.Module) -> torch.Tensor:
        """c · Σ a(1 - a_prev) / Σ (1 - a_prev) at the batch's s (Eq. 5; official criterion)."""
        gates = gates_of(model)
        a_prev, _ = self._on(gates.emb[0].device)
        num = sum((a * (1 - a_prev[n])).sum() for n, a in gates.gates().items())
        den = sum((1 - v).sum() for v in a_prev.values())
        return self.opts.lamb * num / den.clamp_min(torch.finfo(den.dtype).tiny)

    @torch.no_grad()
    def before_step(self, model: nn.Module) -> None:
        """Eq. 2 on the shared weights (after adding recipe "paper"'s weight decay), Eq. 4 on the embeddings, then
        the official clipping of every gradient."""
        net = bare(model)
        decay = self.inc.weight_decay if self.recipe == "paper" else 0.0
        for n, p in masked_params(net).items():
            if p.grad is None:
                continue
            if decay:
                p.grad.add_(p, alpha=decay)
            if self.task > 0:
                p.grad.mul_(self._on(p.device)[1][n])
        gates, s_max, s = gates_of(net), self.opts.smax, gates_of(net).s
        for e in gates.emb:
            if e.grad is not None:
                num = torch.cosh(torch.clamp(s * e, -self.opts.thres_cosh, self.opts.thres_cosh)) + 1
                e.grad.mul_(s_max / s * num / (torch.cosh(e) + 1))
        torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.grad is not None], self.opts.clipgrad)

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        gates = gates_of(model)
        for e in gates.emb:
            e.clamp_(-self.opts.thres_emb, self.opts.thres_emb)
        self.set_batch(model, self.batch + 1)

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        """s starts again at 1/s_max; after the last epoch, BN statistics of the final weights at s_max."""
        self.set_batch(model, 0)
        if epoch + 1 == self.schedule(self.task).epochs:
            gates = gates_of(model)
            gates.s = self.opts.smax
            recalibrate_task(model, self.ctx, self.task, self.opts.bn_batches)
            self.set_batch(model, 0)

    # ----- storage -----

    def write_artifact(self, model: nn.Module, t: int, folder: Path) -> None:
        """Task t's embeddings and BN + head into its folder; the shared weights staged as the new shared file."""
        if t != self.task:
            raise RuntimeError(f"HAT: asked to store task {t}, but task {self.task} was set up")
        net = bare(model)
        network = {n: p.detach().cpu().clone() for n, p in masked_params(net).items()}
        for n, w in network.items():
            held = self.back[n] == 0
            if not torch.equal(w[held], self.start[n][held]):
                raise RuntimeError(f"HAT task {t}: {n} changed a weight between units earlier tasks fully use")
        meta = {"task": self.ctx.tasks[t].name, "num_classes": str(self.ctx.tasks[t].num_classes)}
        emb = {n: e.detach().cpu().clone() for n, e in gates_of(net).embeddings().items()}
        save_tensors(folder / EMBEDDINGS, emb, metadata={**meta, "smax": repr(self.opts.smax),
                                                         "content": "HAT embeddings e per unit, gates sigmoid(smax e)"})
        state = {k: v for k, v in task_state(net).items() if not k.startswith(HAT + ".")}
        save_tensors(folder / STATE, state, metadata=meta)
        save_tensors(staged_path(self.network_path), network, metadata={"content": "shared weights",
                                                                        "tasks": str(t + 1)})

    def rebuild(self, t: int, folder: Path, verified: bool = False) -> nn.Module:
        if Path(folder) != self.ctx.task_dir(t):
            raise ValueError(f"task {t} is stored in {self.ctx.task_dir(t)}, not {folder}")
        path = folder / EMBEDDINGS
        net = assemble(self.ctx.cfg.model, self.ctx.tasks[t].num_classes, load_tensors(self.network_path),
                       load_tensors(folder / STATE), folder / STATE)
        try:
            attach(net, load_tensors(path), float(load_metadata(path)["smax"]))
        except (ValueError, KeyError) as e:
            raise StoredTaskError(f"{path}: {e}") from None
        return net.eval()

    def artifact_files(self, folder: Path) -> dict[str, list[Path]]:
        return {"embeddings": [folder / EMBEDDINGS], "state": [folder / STATE]}

    # ----- reports -----

    def task_report(self, t: int, folder: Path) -> dict:
        """From the stored files: task t's units in use (a > 0.5 at s_max) and the fractional ones (0 < a < 1 in
        float32, where HAT's protection is not exact), the units tasks <= t use together, and the shares of shared
        weights the next task cannot change (1 - min(a_i, a_j) = 0) and can only partly change (between 0 and 1)."""
        with torch.random.fork_rng(devices=[]):
            net = self.ctx.cfg.model.build(self.ctx.tasks[t].num_classes)
        spec = plan(net)
        mine, upto = self.attention([t], spec), self.attention(range(t + 1), spec)
        units = sum(v.numel() for v in mine.values())
        back = condition(upto, spec.views, {n: p.shape for n, p in masked_params(net).items()})
        weights = sum(v.numel() for v in back.values())
        return {"units": units,
                "used_units": sum(int((v > 0.5).sum()) for v in mine.values()) / units,
                "fractional_units": sum(int(((v > 0) & (v < 1)).sum()) for v in mine.values()),
                "capacity_used": sum(int((v > 0.5).sum()) for v in upto.values()) / units,
                "frozen_weights": sum(int((v == 0).sum()) for v in back.values()) / weights,
                "partly_frozen_weights": sum(int(((v > 0) & (v < 1)).sum()) for v in back.values()) / weights,
                "layer_used_units": {n: float((v > 0.5).float().mean()) for n, v in mine.items()}}

    def run_report(self, reports: list[dict]) -> dict:
        keys = ("used_units", "fractional_units", "capacity_used", "frozen_weights", "partly_frozen_weights")
        return {"lamb": self.opts.lamb, "smax": self.opts.smax, "lr": self.opts.lr if self.recipe == "official"
                else self.inc.lr, **{f"{k}_per_task": [r[k] for r in reports] for k in keys}}


METHOD = HardAttention
