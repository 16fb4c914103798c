"""The plain pretrained backbone (`plain_backbone.safetensors` of the pretrain stage) that every baseline starts from
(seed 004_ §5.3: the baselines share the NWS network, trained as a plain float network on the pretraining data),
and the check every method makes of a pretrain output it takes (the plain backbone, NWS's pools): made for the
configured network."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from base.layout import PLAIN
from nws.io import load_metadata, load_tensors
from nws.models import replace_head

CHECKED_META = ("arch", "stem", "width", "pool_size")


def check_pretrain_meta(path: Path, model_cfg) -> dict[str, str]:
    """The metadata of a pretrain output file, after checking it was made for the configured network."""
    meta = load_metadata(path)
    want = {"arch": model_cfg.arch, "stem": model_cfg.stem, "width": str(model_cfg.width),
            "pool_size": str(model_cfg.pool_size)}
    bad = {k: (meta[k], want[k]) for k in CHECKED_META if k in meta and meta[k] != want[k]}
    if bad:
        detail = ", ".join(f"{k}={got!r} (config: {exp!r})" for k, (got, exp) in bad.items())
        raise ValueError(f"{path}: made for another network: {detail}")
    return meta


def plain_path(ctx) -> Path:
    return ctx.pretrain_dir / PLAIN


def check_plain(ctx) -> Path:
    """The backbone file, after checking it exists and was made for the configured network."""
    path = plain_path(ctx)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; run `nws pretrain` with pretrain.kind plain or both first")
    check_pretrain_meta(path, ctx.cfg.model)
    return path


def load_plain(ctx, num_classes: int | None = None) -> nn.Module:
    """The pretrained plain network; with `num_classes`, its head replaced by a fresh one of that many outputs."""
    path = plain_path(ctx)
    net = ctx.cfg.model.build(plain_num_classes(path))
    try:
        net.load_state_dict(load_tensors(path))
    except RuntimeError as e:
        raise ValueError(f"{path}: not a backbone of the configured model: {e}") from None
    if num_classes is not None:
        replace_head(net, num_classes)
    return net


def plain_num_classes(path: Path) -> int:
    """Outputs of the head stored in a plain backbone file (its metadata, else the head's weight)."""
    meta = load_metadata(path)
    if "num_classes" in meta:
        return int(meta["num_classes"])
    state = load_tensors(path)
    if "fc.weight" not in state:
        raise ValueError(f"{path}: no 'fc.weight' and no num_classes metadata; not a plain backbone of nws.models")
    return int(state["fc.weight"].shape[0])
