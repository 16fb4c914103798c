"""Neural Weight Search (seed 004_): layer-wise pools, nearest-kernel search, tasks stored as indices.

```python
import nws
net  = nws.models.resnet18(num_classes=5, stem="nws", width=1.0)
snet = nws.convert(net, pool_size=512)
idx  = nws.export_indices(snet)
nws.load_indices(snet, idx)
plain = nws.materialize(snet)
blob = nws.codec.encode(idx, nws.pool_sizes(snet), mode="packed")
idx2 = nws.codec.decode(blob)
```
"""

from nws import codec, io, memory, models, search, stats
from nws.convert import (
    convert,
    export_indices,
    export_pools,
    load_indices,
    load_pools,
    materialize,
    nws_layers,
    pool_sizes,
    search_loss,
    set_mode,
)
from nws.distill import PoolDistiller
from nws.layers import NWSConv2d, NWSLayer, NWSLinear

__all__ = [
    "NWSConv2d", "NWSLayer", "NWSLinear", "PoolDistiller", "codec", "convert", "export_indices", "export_pools",
    "io", "load_indices", "load_pools", "materialize", "memory", "models", "nws_layers", "pool_sizes", "search",
    "search_loss", "set_mode", "stats",
]
