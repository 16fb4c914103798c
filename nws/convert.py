"""Turn a float network into an NWS network and back, and move tasks in and out of it as indices.

These are the E (encode) and D (lookup) functions of Algorithm 1 (seed 004_): `export_indices` gives C_t,
`load_indices` sets K_t = D(C_t; M) (and the temporary kernels W_{t+1} = K_t, line 3), `materialize` gives the
ordinary network that inference runs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

from nws.layers import NWSConv2d, NWSLayer, NWSLinear
from nws.pools import init_pool


def nws_layers(model: nn.Module) -> Iterator[tuple[str, NWSLayer]]:
    """(name, layer) for every NWS layer, in module order (the order indices are stored in)."""
    for name, module in model.named_modules():
        if isinstance(module, NWSLayer):
            yield name, module


def _layers_matching(model: nn.Module, given: dict, what: str) -> dict[str, NWSLayer]:
    """The model's NWS layers, when `given` has an entry for exactly those layers (else an error naming them)."""
    layers = _layers(model)
    if set(given) != set(layers):
        missing, extra = sorted(set(layers) - set(given)), sorted(set(given) - set(layers))
        raise ValueError(f"{what} do not match the model's NWS layers: missing {missing}, unexpected {extra}")
    return layers


def _layers(model: nn.Module) -> dict[str, NWSLayer]:
    layers = dict(nws_layers(model))
    if not layers:
        raise ValueError("the model has no NWS layers: convert it with nws.convert first")
    return layers


@torch.no_grad()
def convert(
    model: nn.Module,
    pool_size: int = 512,
    pool_init: str = "normal",
    linear_group_size: int = 1,
    skip: tuple[str, ...] = (),
    seed: int | None = None,
) -> nn.Module:
    """A copy of `model` where every nn.Conv2d and nn.Linear (except those named in `skip`) is an NWS layer with its
    own pool. The temporary kernels start from the layer's weights.

    pool_init: "normal" (N(0,1), the paper's random pools), "kmeans" (k-means++ then Lloyd on the layer's own kernels:
    a warm start from a trained network), or "sample" (n distinct kernels of the layer drawn at random).
    """
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for name, module in list(model.named_modules()):
        if name in skip or not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        layer = _nws_twin(module, pool_size, linear_group_size)
        layer.weight.copy_(module.weight)
        if module.bias is not None:
            layer.bias.copy_(module.bias)
        layer.pool.copy_(init_pool(layer.flat_weight(), pool_size, pool_init, generator))
        layer.to(module.weight.device)
        _set_submodule(model, name, layer)
    return model


def _nws_twin(module: nn.Conv2d | nn.Linear, pool_size: int, linear_group_size: int) -> NWSLayer:
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise ValueError(f"padding_mode={module.padding_mode!r} is not supported by NWSConv2d")
        return NWSConv2d(
            module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
            module.dilation, module.groups, bias=module.bias is not None, pool_size=pool_size,
        )
    group = linear_group_size if module.in_features % linear_group_size == 0 else 1
    return NWSLinear(module.in_features, module.out_features, bias=module.bias is not None,
                     pool_size=pool_size, group_size=group)


def _set_submodule(model: nn.Module, name: str, new: nn.Module):
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Set every NWS layer to `search` (temporary kernels train, pools frozen), `distill` (pools move toward the
    temporary kernels, pretraining only) or `frozen` (plain layers on the searched kernels)."""
    for _, layer in nws_layers(model):
        layer.set_mode(mode)
    return model


def search_loss(model: nn.Module) -> torch.Tensor:
    """Σ over layers of the Eq. 2 similarity term of the last forward (the official code sums per-layer means).

    Raises if no layer has a term (no forward yet, or all layers frozen), so a silently zero beta term — the
    official pool-pretraining bug (notes §1.3) — cannot happen here."""
    terms = [layer.diff for _, layer in nws_layers(model) if layer.diff is not None]
    if not terms:
        raise RuntimeError("no NWS similarity terms: run a forward in 'search' or 'distill' mode first")
    return torch.stack(terms).sum()


@torch.no_grad()
def export_indices(model: nn.Module) -> dict[str, torch.Tensor]:
    """C: {layer name: int64 indices}, searched afresh from the current temporary kernels (Eq. 1)."""
    out = {}
    for name, layer in _layers(model).items():
        if layer.mode != "frozen":
            layer.search_()
        out[name] = layer.indices.detach().cpu().clone()
    return out


@torch.no_grad()
def load_indices(model: nn.Module, indices: dict[str, torch.Tensor]) -> nn.Module:
    """Set the searched kernels from `indices` and the temporary kernels to them (Algorithm 1, line 3)."""
    layers = _layers_matching(model, indices, "indices")
    for name, layer in layers.items():
        idx = torch.as_tensor(indices[name]).to(device=layer.indices.device, dtype=torch.long).reshape(-1)
        if idx.numel() != layer.num_groups:
            raise ValueError(f"layer {name!r}: {idx.numel()} indices given, the layer has {layer.num_groups} kernels")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= layer.pool_size):
            raise ValueError(f"layer {name!r}: indices outside the pool [0, {layer.pool_size})")
        layer.indices.copy_(idx)
        layer.weight.copy_(layer.searched_weight())
        layer.forget_search()
    return model


@torch.no_grad()
def materialize(model: nn.Module) -> nn.Module:
    """An ordinary nn.Module (Conv2d/Linear) holding the searched kernels: the network inference runs."""
    model = copy.deepcopy(model)
    for name, layer in list(nws_layers(model)):
        if layer.mode != "frozen":
            layer.search_()
        _set_submodule(model, name, layer.to_plain())
    return model


def pool_sizes(model: nn.Module) -> dict[str, int]:
    return {name: layer.pool_size for name, layer in _layers(model).items()}


def export_pools(model: nn.Module) -> dict[str, torch.Tensor]:
    """{layer name: pool (n × d)}: what pools.safetensors stores, once for all tasks."""
    return {name: layer.pool.detach().cpu().clone() for name, layer in _layers(model).items()}


@torch.no_grad()
def load_pools(model: nn.Module, pools: dict[str, torch.Tensor], source: str = "pools") -> nn.Module:
    """Copy stored pools into the model. `source` (the file) starts every error: a pool set that does not cover
    the model's NWS layers, a pool of the wrong shape, or one holding NaN or inf (a pretraining that diverged)."""
    layers = _layers_matching(model, pools, f"{source}: the pools")
    for name, layer in layers.items():
        if tuple(pools[name].shape) != tuple(layer.pool.shape):
            raise ValueError(
                f"{source}: layer {name!r}: stored pool has shape {tuple(pools[name].shape)}, the layer needs "
                f"{tuple(layer.pool.shape)} (pool size × kernel size): pools from another architecture?"
            )
        bad = int((~torch.isfinite(pools[name])).sum())
        if bad:
            raise ValueError(f"{source}: layer {name!r}: the stored pool holds {bad} non-finite value(s) (NaN or "
                             "inf): the pretraining that wrote it diverged; pretrain again")
        layer.pool.copy_(pools[name])
        layer.forget_search()
    return model
