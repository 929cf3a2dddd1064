"""Checkpoints restore the sharded embeddings, the fused AdaGrad state and the dense optimizer exactly."""

from pathlib import Path

import pytest
import torch

from tests.trainer.specs import tiny_spec_dict
from trainer.errors import RectrainError
from trainer.loop import LocalSession, Trainer
from trainer.spec import parse_spec


def _snapshot(t: Trainer):
    sd = t.dmp.state_dict()
    emb = {
        k: torch.cat([s.tensor.clone() for s in v.local_shards()])
        for k, v in sd.items()
        if hasattr(v, "local_shards")
    }
    dense = {k: v.clone() for k, v in sd.items() if not hasattr(v, "local_shards")}
    mom = {}
    for states in t.dmp.fused_optimizer.state_dict()["state"].values():
        for k, st in states.items():
            mom[k] = torch.cat([s.tensor.clone() for s in st.local_shards()])
    return emb, dense, mom


def _equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_save_then_load_restores_everything(tmp_path):
    spec = parse_spec(tiny_spec_dict())
    session = LocalSession(tmp_path)
    t = Trainer(spec, session, tmp_path)
    batches = list(t.data.train_batches(0))
    for b in batches[:3]:
        t.train_step(b)
    t.global_step = 3
    t.checkpoint(0, 3, {})
    saved = _snapshot(t)
    assert any(v.abs().sum() > 0 for v in saved[2].values())  # AdaGrad state is non-trivial
    for b in batches[3:6]:
        t.train_step(b)
    moved = _snapshot(t)
    assert not _equal(saved[0], moved[0]) and not _equal(saved[2], moved[2])

    # a fresh trainer (new model, new optimizers) resumes from the checkpoint
    t2 = Trainer(spec, session, tmp_path)
    start_pass, start_step = t2._resume()
    assert (start_pass, start_step, t2.global_step) == (0, 3, 3)
    restored = _snapshot(t2)
    for got, want in zip(restored, saved, strict=True):
        assert _equal(got, want)
    # the dense optimizer state came back too
    st2 = t2.dense_opt.state_dict()["state"]
    st1 = t.dense_opt.state_dict()["state"]
    assert st2 and st2.keys() == st1.keys()


# ---------------------------------------------------------------- resharding (DCP)


def _spawn_world(world: int, spec_dict: dict, train_steps: int, resume_from, save_to, dump_dir) -> list[dict]:
    import torch.multiprocessing as mp

    from tests.net import free_port
    from tests.trainer.reshard_worker import run_rank

    Path(dump_dir).mkdir(parents=True, exist_ok=True)
    mp.start_processes(
        run_rank,
        args=(world, free_port(), spec_dict, train_steps, resume_from, save_to, str(dump_dir)),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    return [torch.load(Path(dump_dir) / f"rank_{r}.pt", weights_only=False) for r in range(world)]


def _assert_same(got, want):
    gt, gd = got
    wt, wd = want
    assert gt.keys() == wt.keys() and any("momentum" in k for k in gt)
    for k in wt:
        assert not torch.isnan(wt[k]).any(), k
        assert torch.equal(gt[k], wt[k]), k
    assert gd.keys() == wd.keys()
    for k in wd:
        assert torch.equal(gd[k], wd[k]), k


def test_checkpoints_reshard_between_two_workers_and_one(tmp_path):
    """Saved at 2 workers (each table on one of them), resumed at 1: the same weights and
    row-wise AdaGrad state; trained on at 1, resumed at 2: the same again."""
    from tests.trainer.reshard_worker import DirSession, assemble, shards

    d = tiny_spec_dict(model={"num_replicas": 2}, scaling={"num_workers": 2})
    spec = parse_spec(d)
    ckpt2 = tmp_path / "at2"
    dumps2 = _spawn_world(2, d, 3, None, str(ckpt2), tmp_path / "dump2")
    assert {len(x["sharded"]) for x in dumps2} != {0}  # both ranks own tables
    assert all(x["sharded"] for x in dumps2), "each rank should hold some table"
    saved = assemble(dumps2)
    # read back in one process, without a process group: the same tables, each rank's own
    from trainer.checkpoint import read_model_state, shard_owners

    full = read_model_state(ckpt2)
    owners = shard_owners(ckpt2)
    tables = [k for k in saved[0] if "momentum" not in k]
    assert tables and all(torch.equal(full[k], saved[0][k]) for k in tables)
    assert {r for k in tables for r in owners[k]} == {0, 1}
    assert all(len(owners[k]) == 1 for k in tables)  # table-wise: one rank per table

    # 2 -> 1
    ckpt1 = tmp_path / "at1"
    LocalSession(tmp_path)  # this process: a world of 1 on gloo
    t = Trainer(spec, DirSession(0, 1, str(ckpt2), str(ckpt1)), tmp_path)
    assert t._resume() == (0, 3) and t.global_step == 3
    _assert_same(assemble([shards(t)]), saved)

    # train on at 1 worker, save, then 1 -> 2
    for b in list(t.data.train_batches(0))[3:5]:
        t.train_step(b)
        t.global_step += 1
    t.checkpoint(0, 5, {})
    at1 = assemble([shards(t)])
    assert not torch.equal(at1[0][next(iter(at1[0]))], saved[0][next(iter(saved[0]))])
    dumps = _spawn_world(2, d, 0, str(ckpt1), str(tmp_path / "unused"), tmp_path / "dump3")
    assert [x["start"] for x in dumps] == [(0, 5), (0, 5)]
    _assert_same(assemble(dumps), at1)


def test_column_wise_plans_refuse_to_reshard(tmp_path):
    import json

    from trainer.checkpoint import META_FILE, load_checkpoint

    spec = parse_spec(tiny_spec_dict())
    t = Trainer(spec, LocalSession(tmp_path), tmp_path)
    t.checkpoint(0, 0, {})
    latest = tmp_path / "checkpoints" / "latest"
    meta = json.loads((latest / META_FILE).read_text())
    table = next(iter(meta["sharding"]))
    meta.update(world_size=2, sharding={**meta["sharding"], table: "column_wise"})
    (latest / META_FILE).write_text(json.dumps(meta))
    from trainer.integrity import write_manifest

    write_manifest(latest, 0)  # signed, as a checkpoint saved that way would be
    with pytest.raises(
        RectrainError, match=rf"column-wise sharded table\(s\) {table}.*scaling.num_workers: 2"
    ):
        load_checkpoint(latest, rank=0, world_size=1, dmp=t.dmp, dense_opt=t.dense_opt)


def _vm_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def test_saving_holds_no_second_copy_of_the_tables(tmp_path):
    """DCP's file writer copies each table view it writes (FBGEMM keeps a worker's tables
    in one flat buffer) and held the copies until its one file per rank was closed: peak
    memory at every checkpoint was the tables twice. One file per tensor: one table's copy
    at a time."""
    from trainer.checkpoint import save_checkpoint

    d = tiny_spec_dict(model={"embedding_dim": 32, "hash_size": 300_000, "dense_arch": [16, 32]})
    spec = parse_spec(d)
    t = Trainer(spec, LocalSession(tmp_path), tmp_path)
    tables = spec.embedding_bytes_per_worker()
    assert spec.num_tables() >= 5 and tables > 100 * 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset this process's peak RSS (VmHWM) to its current RSS
    except OSError:
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs)")
    before = _vm_kib("VmRSS") * 1024
    save_checkpoint(
        tmp_path / "ckpt",
        rank=0,
        world_size=1,
        dmp=t.dmp,
        dense_opt=t.dense_opt,
        rank_state={"progress": {}},
    )
    peak = _vm_kib("VmHWM") * 1024 - before
    # one table (1/num_tables of them) plus DCP's planning: far below a second copy (each
    # table's copy, 37 MiB, is above glibc's largest mmap threshold: freed at once)
    assert peak < 0.5 * tables, (
        f"saving raised peak RSS by {peak / 2**20:.0f} MiB, tables {tables / 2**20:.0f} MiB"
    )
    assert len(list((tmp_path / "ckpt").glob("__0_*.distcp"))) > spec.num_tables()
