"""GPU sizing without a GPU (issue 16.3, 16.4): the planner's HBM budget comes from the
device's real memory (a stubbed ``torch.cuda.get_device_properties``) minus a reserve,
``scaling.gpu_memory_gb`` is checked at submit, a plan that would spill to UVM/host is
refused, and the planner gets the real ``LOCAL_WORLD_SIZE``."""

from __future__ import annotations

import types

import pytest
import torch

from tests.trainer.specs import tiny_spec_dict
from trainer.errors import CapacityError
from trainer.model import sharding
from trainer.spec import GPU_RESERVE_MIN_BYTES, gpu_reserve_bytes, gpu_table_budget_bytes, parse_spec

GIB = 1024**3


def _spec(hash_size: int, dim: int, workers: int = 1, **scaling):
    return parse_spec(
        tiny_spec_dict(
            model={"embedding_dim": dim, "hash_size": hash_size, "dense_arch": [16, dim]},
            scaling={"num_workers": workers, "use_gpu": True, **scaling},
            metrics={"window_size": 1024 * workers},
        ),
        check_capacity=False,
    )


@pytest.fixture
def fake_gpu(monkeypatch):
    """A 24 GiB 'GPU' behind torch.cuda's device queries (nothing else of CUDA is used)."""
    props = types.SimpleNamespace(total_memory=24 * GIB)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev=None: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "Fake GPU 24GB")
    return props


def test_reserve_is_ten_percent_at_least_two_gib():
    assert gpu_reserve_bytes(80 * GIB) == 8 * GIB
    assert gpu_reserve_bytes(8 * GIB) == GPU_RESERVE_MIN_BYTES == 2 * GIB


def test_hbm_cap_is_the_device_memory_minus_the_reserve(fake_gpu):
    spec = _spec(hash_size=2000, dim=8)
    cap = sharding.device_hbm_cap(spec, torch.device("cuda", 0))
    assert cap == 24 * GIB - gpu_reserve_bytes(24 * GIB)
    topo = sharding.make_topology(spec, torch.device("cuda", 0), world=1, env={})
    assert topo.compute_device == "cuda"
    # not TorchRec's 32 GiB default: the planner fills what the device really has
    assert {d.storage.hbm for d in topo.devices} == {cap}


def test_declared_gpu_memory_lowers_the_cap(fake_gpu):
    spec = _spec(hash_size=2000, dim=8, gpu_memory_gb=16)
    assert sharding.device_hbm_cap(spec, torch.device("cuda", 0)) == 16 * GIB - 2 * GIB


def test_tables_bigger_than_the_gpu_are_refused_not_spilled(fake_gpu):
    # 6 tables x 2M rows x 1024 dims x 4 B ~ 46 GiB on one worker
    spec = _spec(hash_size=2_000_000, dim=1024)
    with pytest.raises(CapacityError) as e:
        sharding.device_hbm_cap(spec, torch.device("cuda", 0))
    msg = str(e.value)
    assert "Fake GPU 24GB has 24.0 GiB" in msg and "UVM/host" in msg and "scaling.num_workers" in msg


def test_gpu_memory_gb_is_checked_at_submit():
    too_big = tiny_spec_dict(
        model={"embedding_dim": 256, "hash_size": 2_000_000, "dense_arch": [16, 256]},
        scaling={"num_workers": 1, "use_gpu": True, "gpu_memory_gb": 8},
    )
    with pytest.raises(CapacityError) as e:
        parse_spec(too_big)
    assert "scaling.gpu_memory_gb" in str(e.value) and "UVM/host" in str(e.value)
    # the same tables on an 80 GB GPU fit; host memory is not what holds them
    ok = tiny_spec_dict(
        model={"embedding_dim": 256, "hash_size": 2_000_000, "dense_arch": [16, 256]},
        scaling={"num_workers": 1, "use_gpu": True, "gpu_memory_gb": 80, "memory_per_worker_gb": 4},
    )
    assert parse_spec(ok).scaling.gpu_memory_gb == 80


def test_local_world_size_from_the_environment(fake_gpu):
    spec = _spec(hash_size=2000, dim=8, workers=4)
    # Ray Train (and the chart: one GPU per pod) set LOCAL_WORLD_SIZE per node
    topo = sharding.make_topology(spec, torch.device("cuda", 0), world=4, env={"LOCAL_WORLD_SIZE": "1"})
    assert topo.world_size == 4 and topo.local_world_size == 1
    topo = sharding.make_topology(spec, torch.device("cuda", 0), world=4, env={"LOCAL_WORLD_SIZE": "2"})
    assert topo.local_world_size == 2
    # no variable: one node holds every worker
    assert sharding.make_topology(spec, torch.device("cuda", 0), world=4, env={}).local_world_size == 4
    # CPU plans are table-wise only: uneven placements over nodes stay allowed
    topo = sharding.make_topology(spec, torch.device("cpu"), world=3, env={"LOCAL_WORLD_SIZE": "2"})
    assert topo.local_world_size == 3
    with pytest.raises(CapacityError, match="LOCAL_WORLD_SIZE=3 does not divide the world size 4"):
        sharding.local_world_size(4, {"LOCAL_WORLD_SIZE": "3"})


# ---- GPU memory by sharding plan (issue 26.3) ----------------------------------------


def test_a_table_larger_than_one_gpu_is_split_not_refused():
    """30M rows x 64 dims is 7.3 GiB a table, more than an 8 GB GPU's table budget: the
    old whole-tables-per-worker estimate refused it at any num_workers; row-wise it fits
    12 GPUs, and at 4 the refusal names the smallest num_workers that fits."""
    model = {"embedding_dim": 64, "hash_size": 30_000_000, "dense_arch": [16, 64]}
    ok = parse_spec(
        tiny_spec_dict(
            model=model,
            scaling={"num_workers": 12, "use_gpu": True, "gpu_memory_gb": 8, "memory_per_worker_gb": 4},
            metrics={"window_size": 1024 * 12},
        )
    )
    budget = gpu_table_budget_bytes(8 * GIB - gpu_reserve_bytes(8 * GIB))
    assert ok.table_bytes() > budget  # one table does not fit one GPU...
    rows = -(-30_000_000 // 12)
    assert (
        ok.gpu_embedding_bytes_per_worker() == ok.num_tables() * rows * 65 * 4 <= budget
    )  # ...split, it does
    with pytest.raises(CapacityError) as e:
        parse_spec(
            tiny_spec_dict(
                model=model,
                scaling={"num_workers": 4, "use_gpu": True, "gpu_memory_gb": 8},
                metrics={"window_size": 1024 * 4},
            )
        )
    msg = str(e.value)
    # the smallest count: ceil(rows / (budget // (tables x 65 x 4 bytes)))
    need_workers = -(-30_000_000 // (budget // (ok.num_tables() * 65 * 4)))
    assert need_workers == 9
    assert "split row-wise over 4 GPUs that is" in msg and "scaling.gpu_memory_gb" in msg
    assert "raise scaling.num_workers to at least 9 GPUs" in msg and "UVM/host" in msg


def test_gpu_jobs_are_not_charged_host_memory_for_their_tables():
    from services.capacity import job_demand
    from services.settings import Settings

    d = tiny_spec_dict(
        model={"embedding_dim": 64, "hash_size": 30_000_000, "dense_arch": [16, 64]},
        scaling={"num_workers": 12, "use_gpu": True, "gpu_memory_gb": 8, "memory_per_worker_gb": 4},
        metrics={"window_size": 1024 * 12},
    )
    s = Settings(redis_url="redis://unused:6379/0", worker_overhead_gb=0.75)
    assert job_demand(parse_spec(d), s).worker_bytes == int(0.75 * GIB)  # overhead only
    d["scaling"] = {**d["scaling"], "use_gpu": False, "gpu_memory_gb": None, "memory_per_worker_gb": 512}
    cpu = parse_spec(d)
    assert job_demand(cpu, s).worker_bytes == int(cpu.embedding_bytes_per_worker() + 0.75 * GIB)


def _planner_run(spec, hbm_cap: int):
    """TorchRec's own planner, as shard_model runs it, for 4 CUDA ranks on one node: it
    plans on meta tensors without a GPU (Topology(compute_device="cuda"))."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import Topology

    from trainer.model.dlrm import DLRM

    model = DLRM(spec)
    topo = Topology(world_size=4, compute_device="cuda", local_world_size=4, hbm_cap=hbm_cap)
    planner = sharding.sharding_planner(model, topo)
    sharder = EmbeddingBagCollectionSharder(fused_params=sharding.fused_params(spec))
    return planner.plan(model, [sharder])


def test_the_estimate_agrees_with_torchrecs_planner():
    """Reference: TorchRec's planner on a 4-GPU node. Tables too big to place whole, at
    90% of the row-wise estimate's budget: admitted, and the planner finds a plan (with
    row-wise splits); at 110%: refused, and the planner finds none either."""
    from torchrec.distributed.planner.types import PlannerError

    hbm_cap = 4 * GIB
    budget = gpu_table_budget_bytes(hbm_cap)
    tables = 6  # tiny_spec_dict's synthetic features
    for fill, fits in ((0.9, True), (1.1, False)):
        rows = int(fill * budget * 4 / (tables * 65 * 4))
        spec = _spec(hash_size=rows, dim=64, workers=4)
        # whole tables per GPU (2 of the 6 on the busiest) would not fit: only splits do
        assert spec.num_tables() == tables and spec.embedding_bytes_per_worker() > budget
        assert (spec.gpu_fit_error(hbm_cap, "test GPU") is None) == fits
        if fits:
            plan = _planner_run(spec, hbm_cap)
            kinds = {p.sharding_type for ps in plan.plan.values() for p in ps.values()}
            assert kinds & {"row_wise", "table_row_wise"}, kinds  # some table is split
        else:
            with pytest.raises(PlannerError, match="insufficient storage"):
                _planner_run(spec, hbm_cap)
