"""Checkpoint readers that run no code (:mod:`trainer.checkpoint` reads with these).

A checkpoint is files; whoever can write them must not be able to run code in the
process that reads them (a warm start reads checkpoints under the data roots, which
tenants may write). torch.load(weights_only=True) refuses every pickled global that is
not a tensor, a container or one of the numpy types a rank's random state holds; DCP's
own reader unpickles .metadata with pickle.load and its default planner loads the
non-tensor items of a checkpoint with weights_only=False, so both are replaced here by
subclasses (DCP has no option for either).
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.errors import RectrainError, first_line

_DCP_METADATA_TYPES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "Path"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata``: the allow-list of the types DCP metadata holds
    (its dataclasses, ``torch.Size``, dtypes, layouts, paths); anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if name in _DCP_METADATA_TYPES.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a type DCP metadata holds")


def safe_reader(directory: str | Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as f:
                try:
                    md = _MetadataUnpickler(f).load()
                except Exception as e:  # any unpickling failure: one line, no traceback of it
                    raise CheckpointRefused(
                        f"checkpoint: {path} is not DCP metadata rectrain can read ({first_line(e)})"
                    ) from None
            if type(md).__name__ != "Metadata" or not hasattr(md, "storage_data"):
                raise CheckpointRefused(f"checkpoint: {path} is not DCP metadata")
            if getattr(md, "storage_meta", None) is None:
                md.storage_meta = StorageMeta()
            md.storage_meta.load_id = self.load_id
            return md

    return SafeReader(str(directory))


def _safe_bytes(value: Any, where: str) -> Any:
    try:
        return torch.load(value, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointRefused(
            f"checkpoint: an item in {where} is not plain data ({first_line(e)})"
        ) from None


def safe_planner(empty: bool, where: str) -> Any:
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner

    base = _EmptyStateDictLoadPlanner if empty else DefaultLoadPlanner

    class SafePlanner(base):  # type: ignore[valid-type,misc]
        def load_bytes(self, read_item: Any, value: Any) -> None:
            obj = _safe_bytes(value, where)
            if self.flatten_state_dict:
                from torch.distributed.checkpoint._traverse import set_element

                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return SafePlanner()


def _numpy_safe_globals() -> list[Any]:
    """The numpy types a rank's random state pickles (numpy's legacy RNG state)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    kinds = (np.uint32, np.uint64, np.int64, np.int32, np.float64, np.float32, np.bool_, np.uint8)
    return [np.dtype, np.ndarray, _reconstruct, *{type(np.dtype(k)) for k in kinds}]


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` of a checkpoint file with ``weights_only=True`` (numpy's RNG state
    types allowed): a crafted pickle is refused in one line, its code never runs."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointRefused(f"checkpoint: {path} is not a plain tensor file ({first_line(e)})") from None


class CheckpointRefused(RectrainError):
    """A checkpoint file the safe readers refuse (it holds something that is not data)."""


@contextlib.contextmanager
def one_line_errors(d: Path) -> Iterator[None]:
    """DCP wraps every reader error in a CheckpointException (a BaseException whose text
    is a traceback per rank): say the first cause in one line instead."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except RectrainError:
        raise
    except CheckpointException as e:
        causes = [exc for exc, _ in e.failures.values()]
        first = causes[0] if causes else e
        if isinstance(first, RectrainError):
            raise first.__class__(first.message) from None
        raise CheckpointRefused(f"checkpoint: {d} cannot be read ({first_line(first)})") from None
    except Exception as e:
        raise CheckpointRefused(f"checkpoint: {d} cannot be read ({first_line(e)})") from None
