"""The share of kernels the drift-aware search cache searches again per step of a real pool distillation (issue 20).

`python scripts/distill_search_share.py DATA` with DATA the data folder of the demo (runs/demo/data after
`make demo`): the demo's NWS network (ResNet-18 of width 1/4, `nws` stem, 64-kernel pools from k-means), SGD as the
demo's pretraining (lr 0.05, momentum 0.9), Eq. 3 with beta 0.5, the pools distilled by EMA (decay 0.99) with
restarts, for `--epochs` epochs of the digits' pretrain split. bench/search.py --pool-moves times the cache on a
synthetic loop whose random steps move most rows past their budget; this measures what a training step does.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

import nws
from loaders import make_loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="the demo's prepared data folder (runs/demo/data)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = nws.convert(nws.models.build("resnet18", num_classes=10, width=0.25, stem="nws"), pool_size=64, seed=0,
                      pool_init="kmeans")
    distiller = nws.PoolDistiller(net, decay=0.99, restart_every=26, dead_usage=1.0, seed=0)
    layers = dict(nws.nws_layers(net))
    for layer in layers.values():
        layer.set_mode("distill")
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = make_loader(f"{args.data}/pretrain", "train", "memory", batch_size=64, train=True, image_size=32)
    kernels = sum(layer.flat_weight().shape[0] for layer in layers.values())
    shares = []
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            loss = F.cross_entropy(net(x), y) + 0.5 * nws.search_loss(net)
            shares.append(sum(layer.search_cache.last_searched for layer in layers.values()) / kernels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            distiller.step()
    print(f"{len(shares)} steps, {kernels:,} kernels; searched again per step after the first: median "
          f"{statistics.median(shares[1:]):.3f}, mean {statistics.mean(shares[1:]):.3f}, max {max(shares[1:]):.3f}")


if __name__ == "__main__":
    main()
