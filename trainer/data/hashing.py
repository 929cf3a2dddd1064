"""Id hashing: raw ids (ints of any sign/size, strings, missing) -> table rows.

Every raw id is first turned into a 64-bit *base hash* (ints: splitmix64 of their
two's-complement bits; strings: pandas' vectorised SipHash; missing: one reserved
value), then each replica ``k`` maps it to a row with an independent mix
``splitmix64(base ^ seed_k) % hash_size``. Nothing here can raise on odd ids.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
#: base hash of a missing value (its own row, so "missing" can be learned)
MISSING = np.uint64(0x6D697373696E6721)  # "missing!"
_HASH_KEY = "rectrain-ids-v01"  # 16 bytes, fixed: hashes are stable across runs


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 finaliser on uint64 (wrapping arithmetic)."""
    z = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return z


def base_hash_ints(values: np.ndarray) -> np.ndarray:
    """Base hash of integer ids; negative ids are fine (two's complement bits)."""
    v = np.asarray(values)
    if v.dtype.kind == "u":
        return splitmix64(v.astype(np.uint64))
    return splitmix64(v.astype(np.int64).view(np.uint64))


def base_hash_strings(values) -> np.ndarray:
    """Base hash of string ids; None/NaN/"" are MISSING."""
    s = pd.Series(values, dtype="object")
    missing = s.isna().to_numpy()
    s = s.where(~missing, "").astype(str)
    missing = missing | (s == "").to_numpy()
    h = pd.util.hash_array(s.to_numpy(dtype=object), hash_key=_HASH_KEY, categorize=True)
    h = np.array(h, dtype=np.uint64, copy=True)
    h[missing] = MISSING
    return h


def base_hash_column(col: pd.Series) -> np.ndarray:
    """Base hash of a single-valued column of any dtype (ints, floats, strings)."""
    if pd.api.types.is_integer_dtype(col.dtype) and not col.isna().any():
        return base_hash_ints(col.to_numpy())
    if pd.api.types.is_float_dtype(col.dtype):
        # floats holding ids (e.g. ints with NaN): use the integer value when whole
        arr = col.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = ~np.isfinite(arr)
        whole = ~missing & (np.abs(arr) < 2**63) & (np.floor(arr) == arr)
        out = np.array(base_hash_strings(col.astype(str).to_numpy()), copy=True)
        out[whole] = base_hash_ints(arr[whole].astype(np.int64))
        out[missing] = MISSING
        return out
    return base_hash_strings(col.to_numpy(dtype=object))


def replica_rows(base: np.ndarray, replica: int, hash_size: int) -> np.ndarray:
    """Rows in ``[0, hash_size)`` for replica ``replica`` (independent per replica)."""
    seed = splitmix64(np.array([replica + 1], dtype=np.uint64))[0]
    return (splitmix64(base ^ seed) % np.uint64(hash_size)).astype(np.int64)
