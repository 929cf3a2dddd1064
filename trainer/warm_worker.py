"""The worker side of warm execution (:mod:`trainer.warm`): one rank of a warm worker
group, a Ray actor that trains run after run.

A :class:`WarmWorker` imports torch, TorchRec and FBGEMM once and joins the group's
torch.distributed process group once (:meth:`WarmWorker.setup`), keeps this rank's
built datasets per data spec (:data:`DATA_CACHE_SIZE` of them), and trains each run it
is given (:meth:`WarmWorker.run`) with :func:`trainer.worker.run_worker` and a
:class:`WarmSession`, which puts the run's checkpoints under the run's own store.
"""

from __future__ import annotations

import gc
import os
import random
import shutil
import socket
import time
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Any

from trainer import storage
from trainer.errors import RectrainError
from trainer.spec import JobSpec

# built datasets a worker keeps (a study has one; sse_graph arms add their graph's)
DATA_CACHE_SIZE = 3
PG_TIMEOUT_S = 1800  # the process group's; Ray Train's TorchConfig default


class WarmSession:
    """A warm worker's session for one run: no checkpoint to resume from (a run always
    starts fresh), and each checkpoint goes to ``<store>/checkpoints/<name>``."""

    def __init__(self, rank: int, world_size: int, device: Any, node_id: str, store: str, keep: str) -> None:
        self.rank, self.world_size, self.device, self.node_id = rank, world_size, device, node_id
        self.store, self.keep = store, keep

    def checkpoint_dir(self) -> str | None:
        return None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if checkpoint_dir is None:
            return
        name = f"pass_{int(metrics['pass']) + 1:04d}"  # the checkpoint of progress {pass: p + 1}
        if "step_in_pass" in metrics:
            name = f"pass_{int(metrics['pass']):04d}_step_{int(metrics['step_in_pass']):09d}"
        base = storage.join(self.store, "checkpoints")
        # every rank adds its own files (DCP: one per tensor and rank; rank 0 the metadata)
        _put_dir(checkpoint_dir, storage.join(base, name))
        if self.keep == "selected" and self.rank == 0 and "step_in_pass" not in metrics:
            # the ranks' copies of an earlier checkpoint finished before this one's
            # collective save began, so they can go
            _remove_other_dirs(base, keep=name)


def _put_dir(local: str, location: str) -> None:
    if storage.is_local(location):
        shutil.copytree(local, location, dirs_exist_ok=True)
        return
    import pyarrow.fs as pafs

    fs, path = storage.resolve(location)
    pafs.copy_files(local, path, destination_filesystem=fs)


def _remove_other_dirs(base: str, keep: str) -> None:
    import pyarrow.fs as pafs

    fs, path = storage.resolve(base)
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name != keep:
            fs.delete_dir(info.path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class WarmWorker:
    """One rank of a warm worker group (a Ray actor; see :mod:`trainer.warm`)."""

    def __init__(self) -> None:
        self.rank = 0
        self.world_size = 1
        self.device: Any = None
        self.node_id = ""
        self._data: OrderedDict[str, Any] = OrderedDict()
        self.runs = 0

    def address(self) -> tuple[str, str, int, int]:
        """(node id, IP, a free port, pid): the driver picks rank 0's as the master."""
        import ray

        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), ray.util.get_node_ip_address(), _free_port(), os.getpid()

    def setup(
        self,
        rank: int,
        world_size: int,
        local_rank: int,
        local_world_size: int,
        node_rank: int,
        master: str,
        use_gpu: bool,
    ) -> float:
        """Join the group's process group, with the environment Ray Train gives its
        workers (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, NODE_RANK). Returns the
        seconds the imports and the process group took."""
        t0 = time.perf_counter()
        from datetime import timedelta

        import ray
        import torch
        import torch.distributed as dist

        import trainer.loop  # noqa: F401  (torch, TorchRec, FBGEMM: once, here)
        from trainer.session import local_backend

        self.rank, self.world_size = rank, world_size
        self.node_id = ray.get_runtime_context().get_node_id()
        env = {
            "RANK": rank,
            "LOCAL_RANK": local_rank,
            "WORLD_SIZE": world_size,
            "LOCAL_WORLD_SIZE": local_world_size,
            "NODE_RANK": node_rank,
        }
        os.environ.update({k: str(v) for k, v in env.items()})
        if use_gpu:
            # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
            self.device = torch.device("cuda", 0)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        dist.init_process_group(
            local_backend(self.device),
            init_method=f"tcp://{master}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=PG_TIMEOUT_S),
        )
        return time.perf_counter() - t0

    def _dataset(self, spec: JobSpec) -> tuple[Any, float]:
        """This rank's data for ``spec`` (cached per data spec) and the seconds it took
        to build (0 when cached)."""
        from trainer.data.dataset import RankData

        key = RankData.cache_key(spec, self.rank, self.world_size)
        cached = self._data.get(key)
        if cached is not None:
            self._data.move_to_end(key)
            return cached.for_spec(spec), 0.0
        t0 = time.perf_counter()
        data = RankData(spec, self.rank, self.world_size)
        self._data[key] = data
        while len(self._data) > DATA_CACHE_SIZE:
            self._data.popitem(last=False)
        return data, time.perf_counter() - t0

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """Train one run to its end: {ok, passes, timings, rss_bytes} or {ok: False,
        error}. A run's failure (divergence, bad data) is its result; the worker goes on."""
        import numpy as np
        import torch

        from trainer.worker import rss_bytes, run_worker

        t_start = time.time()
        trainer = None
        try:
            spec = JobSpec.model_validate(job["spec"])
            # a fresh worker's global RNGs: Python's and NumPy's are not read by a run (its
            # generators are seeded from training.seed); torch's is seeded by the Trainer
            random.seed(0)
            np.random.seed(0)
            if spec.training.compile:
                torch._dynamo.reset()  # no graph or guard of an earlier run's model
            data, data_s = self._dataset(spec)
            keep = spec.training.pass_checkpoints or "selected"
            session = WarmSession(self.rank, self.world_size, self.device, self.node_id, job["store"], keep)
            marks = {**job.get("marks", {}), "worker": t_start}
            trainer = run_worker(
                spec,
                session,
                Path(job["run_dir"]),
                job_id=job.get("job_id"),
                redis_url=job.get("redis_url"),
                stdout_sink=job.get("stdout_sink", False),
                job_store=job["store"],
                data=data,
                pass_checkpoints=keep,
                marks=marks,
                init_from_checked=job.get("init_from_checked", False),
            )
            timings = dict(trainer.timings, data_s=data_s)
            out: dict[str, Any] = {"ok": True, "passes": trainer.passes, "timings": timings}
        except RectrainError as e:
            out = {"ok": False, "error": str(getattr(e, "message", e))}
        except Exception as e:  # a run's own failure: reported, the worker goes on
            out = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        finally:
            self.runs += 1
            del trainer
            gc.collect()
        out["rss_bytes"] = rss_bytes()
        out["runs"] = self.runs
        return out

    def rss(self) -> int:
        from trainer.worker import rss_bytes

        return rss_bytes()
