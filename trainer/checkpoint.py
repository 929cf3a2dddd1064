"""Checkpoints that reshard: ``torch.distributed.checkpoint`` (DCP) for the sharded state.

One checkpoint directory (Ray Train merges every rank's files into it, under the job's
storage: a shared path or ``s3://``) holds:

- DCP files (``.metadata``, ``__<rank>_<n>.distcp``, one per tensor): the DMP state dict — embedding
  shards and the replicated dense weights — and the FBGEMM fused optimizer's state
  (row-wise AdaGrad ``momentum1`` shards). DCP records each shard's global offsets, so
  a job with another ``scaling.num_workers`` (another plan) loads the same checkpoint:
  every rank reads exactly the rows its new shards cover.
- under ``regs.``: regularizer state sharded like the tables (``freq_decay``'s
  last-read clock per row, :mod:`trainer.regularizers.freq_decay`), resharded by DCP
  like the AdaGrad state; a checkpoint without it loads with that state fresh.
- ``dense_opt.pt`` (rank 0): the dense optimizer's state. It is replicated (dense
  parameters are data-parallel), so one copy serves any world size.
- ``rank_<r>.pt``: this rank's progress, random state (torch, CUDA, numpy, python) and
  the train metrics' states mid-pass — what makes a resume at the same world size exact.
  At another world size a rank's random stream and metric states have no counterpart:
  the random state is seeded from (``training.seed``, step, rank) and a pass resumed
  mid-way reports train NE over its resumed part only (test NE is unaffected).
- ``rectrain.json`` (rank 0): format, world size, each table's sharding type, where
  in the run it was taken (``progress``) and the model it holds (``model``:
  :func:`trainer.lifecycle.model_signature`), readable without torch.

Column-wise sharded tables cannot change world size: their row-wise AdaGrad state
holds one value per row *per column shard*, which does not map onto another column
split, so such a resume is refused with the world size to use.

Every file is read with readers that run no code (:mod:`trainer.checkpoint_readers`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.checkpoint_readers import one_line_errors, safe_planner, safe_reader, safe_torch_load
from trainer.errors import RectrainError
from trainer.integrity import write_manifest

FORMAT = "rectrain-dcp-1"
META_FILE = "rectrain.json"
DENSE_OPT_FILE = "dense_opt.pt"
COLUMN_WISE = ("column_wise", "table_column_wise")


def rank_file(directory: str | Path, rank: int) -> Path:
    return Path(directory) / f"rank_{rank}.pt"


def sharding_types(dmp: torch.nn.Module) -> dict[str, str]:
    """Table name -> sharding type of the DMP's plan."""
    out: dict[str, str] = {}
    # DistributedModelParallel attributes: torch types Module.__getattr__ as Tensor | Module
    for module_plan in dmp.plan.plan.values():  # type: ignore[union-attr,operator]
        for table, ps in module_plan.items():
            out[table] = str(ps.sharding_type)
    return out


def rng_state(device: torch.device) -> dict[str, Any]:
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng_state(st: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def reseed(seed: int, step: int, rank: int, device: torch.device) -> None:
    """A deterministic random state for a rank that has no saved one."""
    s = int(np.random.SeedSequence([seed, step, rank, 0xC4]).generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)
    if device.type == "cuda":
        torch.cuda.manual_seed(s)


def _sharded_state(dmp: torch.nn.Module, regs: dict[str, Any] | None = None) -> dict[str, Any]:
    # DistributedModelParallel.fused_optimizer (torch types Module.__getattr__ as Tensor | Module)
    sd = {"model": dmp.state_dict(), "sparse_opt": dmp.fused_optimizer.state_dict()}  # type: ignore[union-attr]
    if regs:
        sd["regs"] = regs
    return sd


def _saved_regs(directory: Path, regs: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``regs`` that the checkpoint in ``directory`` holds."""
    have = safe_reader(directory).read_metadata().state_dict_metadata  # no code from the file
    return {k: v for k, v in regs.items() if f"regs.{k}" in have}


def save_checkpoint(
    directory: str | Path,
    *,
    rank: int,
    world_size: int,
    dmp: torch.nn.Module,
    dense_opt: torch.optim.Optimizer,
    rank_state: dict[str, Any],
    meta: dict[str, Any] | None = None,
    regs: dict[str, Any] | None = None,
) -> None:
    """Collective (every rank calls it): write this rank's part of a checkpoint
    (``meta``: more fields for rank 0's ``rectrain.json``; ``regs``: sharded
    regularizer state, :meth:`RegularizerSet.checkpoint_state`)."""
    import torch.distributed.checkpoint as dcp

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    # one file per tensor: DCP's file writer copies each view it writes (FBGEMM keeps
    # every table of a worker as a view of one flat buffer) and holds the copies until
    # the file is closed, so one file per rank held a second copy of all the tables at
    # every checkpoint; per tensor, one table's copy at a time
    writer = dcp.FileSystemWriter(str(d), single_file_per_rank=False)
    with torch.no_grad():
        dcp.save(_sharded_state(dmp, regs), storage_writer=writer)
    torch.save(rank_state, rank_file(d, rank))
    if rank == 0:
        torch.save(dense_opt.state_dict(), d / DENSE_OPT_FILE)
        out = {**(meta or {}), "format": FORMAT, "world_size": world_size, "sharding": sharding_types(dmp)}
        (d / META_FILE).write_text(json.dumps(out, indent=1))
    write_manifest(d, rank)  # last: signs every file this rank wrote (trainer/integrity.py)


def _check_source(d: Path, field: str) -> None:
    from trainer.integrity import check_trusted

    check_trusted(d, field)


def load_checkpoint(
    directory: str | Path,
    *,
    rank: int,
    world_size: int,
    dmp: torch.nn.Module,
    dense_opt: torch.optim.Optimizer,
    regs: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Collective: restore the sharded model, both optimizers (and ``regs`` in place,
    see :func:`load_weights`); return (this rank's saved state, whether it is this
    rank's own — False after a change of world size, where it is rank 0's, for the
    progress counters only)."""
    d = Path(directory)
    saved_world = load_weights(d, world_size=world_size, dmp=dmp, dense_opt=dense_opt, regs=regs)
    own = saved_world == world_size
    return safe_torch_load(rank_file(d, rank if own else 0)), own


def load_weights(
    directory: str | Path,
    *,
    world_size: int,
    dmp: torch.nn.Module,
    dense_opt: torch.optim.Optimizer | None,
    regs: dict[str, Any] | None = None,
    field: str = "checkpoint",
) -> int:
    """Collective: restore the sharded model and (unless ``dense_opt`` is None) both
    optimizers' state from a checkpoint saved at any world size; return that world size.
    Only a checkpoint rectrain signed (or, where the operator allows, a foreign one) is
    read, and only with the readers that run no code (:mod:`trainer.checkpoint_readers`).

    ``regs`` (regularizer state, with ``dense_opt``): its entries that the checkpoint
    holds are loaded in place and the others removed from the dict, so the caller
    sees what was restored."""
    import torch.distributed.checkpoint as dcp

    d = Path(directory)
    _check_source(d, field)
    safe_reader(d).read_metadata()  # refused here in one line (DCP would log a fallback)
    meta_path = d / META_FILE
    if not meta_path.exists():
        raise RectrainError(
            f"checkpoint: {d} has no {META_FILE}: it was written by an older rectrain "
            "(per-rank files); resume it with that version, or start the job afresh"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise RectrainError(
            f"checkpoint: format {meta.get('format')!r} in {d}, this rectrain reads {FORMAT!r}"
        )
    saved_world = int(meta["world_size"])
    if saved_world != world_size:
        now = sharding_types(dmp)
        col = sorted(
            t
            for t in set(meta["sharding"]) | set(now)
            if meta["sharding"].get(t) in COLUMN_WISE or now.get(t) in COLUMN_WISE
        )
        if col:
            raise RectrainError(
                f"checkpoint: saved at {saved_world} worker(s) with column-wise sharded table(s) "
                f"{', '.join(col)}; their row-wise AdaGrad state does not reshard to another "
                f"column split: resume with scaling.num_workers: {saved_world}"
            )
    if regs and dense_opt is not None:
        found = _saved_regs(d, regs)
        for k in set(regs) - set(found):
            del regs[k]
    sd = _sharded_state(dmp, regs) if dense_opt is not None else {"model": dmp.state_dict()}
    with torch.no_grad(), one_line_errors(d):
        dcp.load(sd, storage_reader=safe_reader(d), planner=safe_planner(False, str(d)))
        dmp.load_state_dict(sd["model"])
        if dense_opt is not None:
            dmp.fused_optimizer.load_state_dict(sd["sparse_opt"])  # type: ignore[union-attr]
    if dense_opt is not None:
        dense_opt.load_state_dict(safe_torch_load(d / DENSE_OPT_FILE))
    return saved_world


# ---------------------------------------------------------------- reading without a process group


def read_model_state(directory: str | Path, field: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The whole (unsharded) model state of a checkpoint, in one process: name -> tensor
    (a signed checkpoint, or a foreign one where allowed; read with the safe readers)."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    d = Path(directory)
    _check_source(d, field)
    safe_reader(d).read_metadata()  # refused here in one line (DCP would log a fallback)
    # what dcp_to_torch_save does, with the readers that run no code, in memory
    sd: dict[str, Any] = {}
    with one_line_errors(d):
        _load_state_dict(sd, storage_reader=safe_reader(d), planner=safe_planner(True, str(d)), no_dist=True)
    return dict(sd["model"])


def shard_owners(directory: str | Path) -> dict[str, set[int]]:
    """Model tensor name -> the ranks whose files hold (non-empty) parts of it."""
    md = safe_reader(directory).read_metadata()
    out: dict[str, set[int]] = {}
    for index, info in md.storage_data.items():
        if not index.fqn.startswith("model."):
            continue
        name = index.fqn[len("model.") :]
        chunk = md.state_dict_metadata[index.fqn]
        chunks = getattr(chunk, "chunks", None)
        if chunks is not None and index.index is not None and chunks[index.index].sizes.numel() == 0:
            continue
        rank = int(Path(info.relative_path).name.split("_")[2])  # "__<rank>_<n>.distcp"
        out.setdefault(name, set()).add(rank)
    return out
