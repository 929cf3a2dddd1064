"""Train-only rewrites of the KeyedJaggedTensor before the model.

- ``sparse_dropout``: every id is dropped with probability p (its feature's rate):
  it leaves ``values`` and its example's length shrinks by one. The replicas
  ``f__r0 .. f__r{R-1}`` of one feature hold the same raw ids (different hashes), so
  they drop the same positions.
- ``sse_se``: every id is replaced with probability p by a row drawn uniformly from
  ``[0, hash_size)`` of the same table (ids are already hashed rows), independently
  per table.

Both are O(ids): one random draw per id, vectorised over the whole KJT.
"""

from __future__ import annotations

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


def feature_of(key: str) -> str:
    """KJT key ``f"{feature}__r{replica}"`` -> feature."""
    return key.rsplit("__r", 1)[0]


def rates_per_key(keys: list[str], p: float, per_feature: dict[str, float]) -> list[float]:
    return [per_feature.get(feature_of(k), p) for k in keys]


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def sparse_dropout(kjt: KeyedJaggedTensor, rates: list[float], gen: torch.Generator) -> KeyedJaggedTensor:
    """Drop each id with its key's rate; replicas of a feature drop the same positions."""
    if not any(r > 0 for r in rates):
        return kjt
    values = kjt.values()
    lengths_per_key = kjt.length_per_key()
    keep_parts: list[torch.Tensor] = []
    draws: dict[str, torch.Tensor] = {}
    for key, n, rate in zip(kjt.keys(), lengths_per_key, rates, strict=True):
        f = feature_of(key)
        u = draws.get(f)
        if u is None or u.numel() != n:
            u = torch.rand(n, generator=gen, device=values.device)
            draws[f] = u
        keep_parts.append(u >= rate)
    keep = torch.cat(keep_parts)
    csum = torch.zeros(keep.numel() + 1, dtype=torch.long, device=values.device)
    torch.cumsum(keep, 0, out=csum[1:])
    offsets = kjt.offsets().long()
    lengths = (csum[offsets[1:]] - csum[offsets[:-1]]).to(kjt.lengths().dtype)
    weights = kjt.weights_or_none()
    return KeyedJaggedTensor(
        keys=kjt.keys(),
        values=values[keep],
        lengths=lengths,
        weights=None if weights is None else weights[keep],
        stride=kjt.stride(),
    )


def sse_se(
    kjt: KeyedJaggedTensor, rates: list[float], num_rows: int, gen: torch.Generator
) -> KeyedJaggedTensor:
    """Replace each id with probability its key's rate by a uniform row of its table."""
    if not any(r > 0 for r in rates):
        return kjt
    values = kjt.values()
    dev = values.device
    rate = torch.tensor(rates, dtype=torch.float32, device=dev).repeat_interleave(
        torch.tensor(kjt.length_per_key(), device=dev), output_size=values.numel()
    )
    hit = torch.rand(values.numel(), generator=gen, device=dev) < rate
    idx = hit.nonzero().squeeze(1)
    new = values.clone()
    new[idx] = torch.randint(0, num_rows, (idx.numel(),), generator=gen, device=dev, dtype=values.dtype)
    return KeyedJaggedTensor(
        keys=kjt.keys(),
        values=new,
        lengths=kjt.lengths(),
        offsets=kjt.offsets(),
        weights=kjt.weights_or_none(),
        stride=kjt.stride(),
        length_per_key=kjt.length_per_key(),
        offset_per_key=kjt.offset_per_key(),
    )
