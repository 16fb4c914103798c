"""The plain pretrained backbone (`plain_backbone.safetensors` of the pretrain stage) that every baseline starts from
(seed 004_ §5.3: the baselines share the NWS network, trained as a plain float network on the pretraining data)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from base.layout import PLAIN
from incremental import nws_net
from nws.io import load_tensors
from nws.models import replace_head


def plain_path(ctx) -> Path:
    return ctx.pretrain_dir / PLAIN


def check_plain(ctx) -> Path:
    """The backbone file, after checking it exists and was made for the configured network."""
    path = plain_path(ctx)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; run `nws pretrain` with pretrain.kind plain or both first")
    nws_net.check_pretrain_meta(path, ctx.cfg.model)
    return path


def load_plain(ctx, num_classes: int | None = None) -> nn.Module:
    """The pretrained plain network; with `num_classes`, its head replaced by a fresh one of that many outputs."""
    path = plain_path(ctx)
    net = ctx.cfg.model.build(nws_net.plain_num_classes(path))
    try:
        net.load_state_dict(load_tensors(path))
    except RuntimeError as e:
        raise ValueError(f"{path}: not a backbone of the configured model: {e}") from None
    if num_classes is not None:
        replace_head(net, num_classes)
    return net
