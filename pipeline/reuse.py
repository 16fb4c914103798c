"""`pretrain.reuse`: another experiment's finished pretrain outputs taken as this one's (the paper's benchmarks all
search the ImageNet pools), found and checked when the pipeline plans its stages, before any stage runs.

A relative path is read from the runs folder, as the pipeline lays runs out (`imagenet_pools_resnet18/seed0/pretrain`
is `<runs>/imagenet_pools_resnet18/seed0/pretrain`), so a config means the same folder from any working directory;
an absolute path stays as it is.

The reused outputs must hold the network this config builds: the model keys they were pretrained with (the
resolved config that pretrain/run.py writes first, config.json; else the metadata of their safetensors files) and the
input channels of their first convolution must equal this config's, or the incremental stage would fail on them
after the data stage ran (issue 19). Another image size is allowed and only noted: pools hold kernels, whose shapes do
not depend on the input size, and every network of nws.models ends in a global average pool (seed 004_ searches the
ImageNet pools, pretrained at 224x224, for 32x32 CIFAR tasks).
"""

from __future__ import annotations

from pathlib import Path

from base.config import ConfigError, ModelConfig
from base.layout import CONFIG, PLAIN, POOLS
from nws.io import load_metadata, read_json

POOL_KEYS = ("pool_size", "linear_group_size")  # they shape the pools: compared only where pools are reused


def resolve(reuse: str, runs_dir: Path) -> Path:
    """The folder `pretrain.reuse` names: a relative path under the runs folder, an absolute one as given."""
    path = Path(reuse).expanduser()
    return (path if path.is_absolute() else Path(runs_dir) / path).resolve()


def recorded(folder: Path) -> tuple[dict, dict | None, Path | None]:
    """(model section, data section or None, the file they come from) of the pretraining that wrote `folder`:
    its config.json, else the model metadata of its pools or plain backbone; ({}, None, None) when none is there
    (the folder is not written yet: the pretrain stage refuses it when it runs)."""
    if (folder / CONFIG).is_file():
        config = read_json(folder / CONFIG)
        return config.get("model", {}), config.get("data"), folder / CONFIG
    for name in (POOLS, PLAIN):
        if (folder / name).is_file():
            meta = load_metadata(folder / name)
            return {k: meta[k] for k in ModelConfig.model_fields if k in meta}, None, folder / name
    return {}, None, None


def differences(model: ModelConfig, theirs: dict, pools: bool, source: str) -> list[str]:
    """`model.<key>: <theirs> there (<source>), <ours> here` for each model key that builds another network (the
    stem only where the architecture has one, the pool keys only where pools are reused)."""
    keys = ["arch", "width"] + (["stem"] if model.has_stem() else []) + (list(POOL_KEYS) if pools else [])
    found = []
    for key in keys:
        if key not in theirs:
            continue
        ours = getattr(model, key)
        if type(ours)(theirs[key]) != ours:  # metadata values are strings ("0.25")
            found.append(f"model.{key}: {theirs[key]} there ({source}), {ours} here")
    return found


def input_channels(folder: Path, model: ModelConfig) -> tuple[int, int] | None:
    """(stored, expected) input channels of the network's first convolution, read from the header of the plain
    backbone (None without one: indices and pools do not say it)."""
    from safetensors import safe_open
    from torch import nn

    if not (folder / PLAIN).is_file():
        return None
    name, conv = next((n, m) for n, m in model.build(2).named_modules() if isinstance(m, nn.Conv2d))
    with safe_open(str(folder / PLAIN), framework="pt") as f:
        if f"{name}.weight" not in f.keys():
            return None
        shape = f.get_slice(f"{name}.weight").get_shape()
    return shape[1] * conv.groups, conv.in_channels


def check(cfg, folder: Path) -> list[str]:
    """Notes about reusing `folder` for `cfg` (another image size); a ConfigError naming the folder and every
    differing key when its outputs hold another network."""
    theirs, data, source = recorded(folder)
    if source is None:
        return []
    found = differences(cfg.model, theirs, (folder / POOLS).is_file(), source.name)
    channels = None if found else input_channels(folder, cfg.model)
    if channels and channels[0] != channels[1]:
        found.append(f"input channels: {channels[0]} there ({PLAIN}), {channels[1]} here")
    if found:
        raise ConfigError(f"pretrain.reuse: {folder} holds pretrain outputs of another network: " + "; ".join(found)
                          + ". Reuse outputs pretrained with this model, or set these keys to theirs")
    size = (data or {}).get("image_size", cfg.data.image_size)
    if size == cfg.data.image_size:
        return []
    return [f"note: pretrain.reuse: {folder} was pretrained on {_size(size)}, this experiment uses "
            f"{_size(cfg.data.image_size)} (data.image_size): allowed, the pools hold kernels and the network ends in "
            "a global average pool"]


def _size(size: int | None) -> str:
    return "images of their own size" if size is None else f"{size}x{size} images"


def announce(cfg, runs_dir: Path) -> Path:
    """The folder `pretrain.reuse` names, echoed (with how a relative path was read) and checked (module
    docstring) before any stage runs."""
    folder = resolve(cfg.pretrain.reuse, runs_dir)
    rule = "" if Path(cfg.pretrain.reuse).expanduser().is_absolute() else f", relative to the runs folder {runs_dir}"
    print(f"[pipeline] pretrain.reuse={cfg.pretrain.reuse}{rule}: the pretrain outputs of {folder}", flush=True)
    for note in check(cfg, folder):
        print(f"[pipeline] {note}", flush=True)
    return folder
