"""``embedding_reset`` and ``min_count`` against independent references.

- embedding_reset on 2 gloo ranks (tables placed table-wise over both,
  two_ranks_reset.py): at the start of pass 1 every table, assembled from the ranks'
  shards, is exactly the initialiser's draw with the seed of (training.seed, pass 1),
  and its AdaGrad state is 0; then 20 steps of both ranks agree with a plain-PyTorch
  loop (EmbeddingBag tables, autograd, row-wise AdaGrad written out) started from that
  draw. In process: only the listed tables reset, dense weights and the dense
  optimizer's state are kept; a run stopped and resumed (at a pass start or inside the
  pass after a reset) gives the same numbers as one that was not.
- min_count: the ids each rank's batches read are those of an independent count of
  the raw ids over every training row (both ranks), rare and unseen ids on the shared
  row; strata and sse_graph neighbours follow.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reg_helpers import DIM, HASH, LR, RefEBC, make_spec, momenta, rowwise_adagrad, snapshot, spec_dict
from two_ranks_reset import STEPS
from two_ranks_reset import spec as two_rank_spec

from tests.gloo_ranks import run_two_ranks
from trainer.data.dataset import RankData
from trainer.data.hashing import replica_rows
from trainer.data.min_count import RARE
from trainer.data.shard import make_source
from trainer.loop import LocalSession, Trainer
from trainer.model.dlrm import DLRM
from trainer.model.embedding_init import table_rows
from trainer.model.sharding import dense_named_parameters
from trainer.regularizers.reset import reset_seed
from trainer.spec import parse_spec

REPO = Path(__file__).resolve().parents[2]
BOUND = math.sqrt(1.0 / HASH)  # TorchRec's default init: uniform(-sqrt(1/rows), sqrt(1/rows))


def _draw(seed: int, name: str) -> torch.Tensor:
    return table_rows(seed, name, HASH, DIM, 0, HASH, low=-BOUND, high=BOUND)


# --------------------------------------------------------------------------- 2 ranks


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("two_ranks_reset")
    run_two_ranks(Path(__file__).with_name("two_ranks_reset.py"), out, str(out))
    return [torch.load(out / f"rank_{r}.pt", weights_only=False) for r in range(2)]


def _assemble(ranks: list[dict], what: str, part: str | int) -> dict[str, torch.Tensor]:
    parts: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for r in ranks:
        src = r[what][part]
        for name, shards in src.items():
            parts.setdefault(name, []).extend(shards)
    return {n: torch.cat([t for _, t in sorted(p, key=lambda x: x[0])]) for n, p in parts.items()}


def _reference_pass(spec, tables: dict[str, torch.Tensor], dense: dict[str, torch.Tensor]):
    """``STEPS`` steps of pass 1 of both ranks in plain PyTorch from ``tables`` (G = 0):
    every gradient (rows and dense) is that of the mean over the ranks of their
    batch-mean losses (TorchRec divides the rows' gradients by the world size, as DDP
    averages the dense ones), then row-wise AdaGrad and SGD. The tables after each step."""
    ref = DLRM(spec, dense_dropout=0.0)
    ref.ebc = RefEBC({n[2:]: t for n, t in tables.items()})  # t_<key> -> KJT key
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(dense[n])
    state = {k: torch.zeros(HASH, dtype=torch.float64) for k in ref.ebc.w}
    streams = [RankData(spec, r, 2).train_batches(1) for r in range(2)]
    lr_dense = spec.training.dense_optimizer.lr
    out = []
    for _ in range(STEPS):
        total = 0.0
        for s in streams:
            b = next(s)
            logits = ref(b.dense, b.sparse)
            total = total + F.binary_cross_entropy_with_logits(logits, b.labels, weight=b.weights) / 2
        ref.zero_grad()
        for w in ref.ebc.w.values():
            w.grad = None
        total.backward()
        with torch.no_grad():
            for k, w in ref.ebc.w.items():
                new, state[k] = rowwise_adagrad(w, w.grad, state[k], lr=LR)
                w.copy_(new.float())
            for p in ref.parameters():
                p -= lr_dense * p.grad
        out.append({f"t_{k}": w.detach().clone() for k, w in ref.ebc.w.items()})
    return out


@pytest.mark.slow
def test_embedding_reset_on_two_ranks_matches_the_initialiser_and_a_plain_loop(two_ranks):
    spec = two_rank_spec()
    assert all(r["reset"]["tables"] for r in two_ranks), "one rank holds no table: placement not exercised"
    before = _assemble(two_ranks, "before", "tables")
    reset = _assemble(two_ranks, "reset", "tables")
    states_before = _assemble(two_ranks, "before", "states")
    states_reset = _assemble(two_ranks, "reset", "states")
    assert len(reset) == 4
    seed = reset_seed(spec.training.seed, 1)
    for name, table in reset.items():
        assert torch.equal(table, _draw(seed, name)), f"{name}: not the initialiser's draw for pass 1"
        assert not torch.equal(table, _draw(spec.training.seed, name)), (
            "the reset re-drew the initial weights"
        )
        assert not torch.equal(before[name], table)
        assert float(states_before[name].abs().sum()) > 0 and float(states_reset[name].abs().sum()) == 0
    d0, d1 = two_ranks[0]["dense"], two_ranks[1]["dense"]
    assert all(torch.equal(d0[n], d1[n]) for n in d0)

    expected = _reference_pass(spec, reset, d0)
    diffs = []
    for step in range(STEPS):
        after = _assemble(two_ranks, "after", step)
        diffs.append(max(float((after[n].double() - expected[step][n].double()).abs().max()) for n in after))
    print("max |trainer - reference| per step:", [f"{d:.2g}" for d in diffs])
    worst = max(diffs)
    moved = min(float((after[n] - reset[n]).abs().max()) for n in after)
    assert moved > 1e-3, "the steps after the reset did not train"
    assert worst <= 1e-6, f"max |trainer - reference| after {STEPS} steps on 2 ranks: {worst:.3g}"


# --------------------------------------------------------------------------- in process


def test_embedding_reset_listed_tables_only_keeps_dense_and_its_optimizer(make_trainer):
    tr = make_trainer(
        [{"type": "embedding_reset", "passes": [1], "features": ["user_id"]}],
        training={"dense_optimizer": {"type": "adam", "lr": 0.01}},
    )
    tr.regs.on_pass_start(0, tr.dmp, tr.dense_opt)
    tr._train_pass(0, 0)
    w0, g0 = snapshot(tr.dmp), momenta(tr.dmp)
    dense0 = {n: p.detach().clone() for n, p in dense_named_parameters(tr.dmp)}
    adam0 = {id(p): {k: v.clone() for k, v in st.items()} for p, st in tr.dense_opt.state.items()}
    assert adam0, "adam has no state to keep"
    tr.regs.on_pass_start(1, tr.dmp, tr.dense_opt)
    w1, g1 = snapshot(tr.dmp), momenta(tr.dmp)
    assert torch.equal(w1["user_id__r0"], _draw(reset_seed(tr.spec.training.seed, 1), "t_user_id__r0"))
    assert float(g1["user_id__r0"].abs().sum()) == 0 and float(g0["user_id__r0"].abs().sum()) > 0
    for key in ("ad_id__r0", "ad_history__r0", "ctx_0__r0"):
        assert torch.equal(w1[key], w0[key]) and torch.equal(g1[key], g0[key]), key
    assert all(torch.equal(p, dense0[n]) for n, p in dense_named_parameters(tr.dmp))
    for p, st in tr.dense_opt.state.items():
        assert all(torch.equal(v, adam0[id(p)][k]) for k, v in st.items())
    # a run resumed inside pass 1 (its checkpoint holds the reset tables) resets nothing
    tr.regs.on_pass_start(1, tr.dmp, tr.dense_opt, resumed=True)
    assert torch.equal(snapshot(tr.dmp)["user_id__r0"], w1["user_id__r0"])


class _Stop(Exception):
    pass


class _StopAt(LocalSession):
    """Stops the run (like a crash) right after the checkpoint of (pass, step_in_pass)."""

    def __init__(self, run_dir: Path, at: tuple[int, int]) -> None:
        super().__init__(run_dir)
        self.at = at

    def report(self, metrics, checkpoint_dir) -> None:
        super().report(metrics, checkpoint_dir)
        if (metrics.get("pass"), metrics.get("step_in_pass", 0)) == self.at:
            raise _Stop


def test_embedding_reset_survives_resume(tmp_path):
    """A run stopped inside pass 1 after its reset (the resumed run must not reset
    again), resumed, stopped at the end of pass 1 (the resumed run resets at the start
    of pass 2) and resumed again gives the numbers of a run never stopped."""
    spec = make_spec(
        [{"type": "embedding_reset", "every": 1}],
        training={"num_passes": 3, "checkpoint_every_steps": 4},
    )
    whole = Trainer(spec, LocalSession(tmp_path / "whole"), tmp_path / "whole")
    expected = whole.run()
    run = tmp_path / "run"
    for at in ((1, 4), (1, 0)):  # (the results' pass index, step_in_pass; 0 = the pass end)
        with pytest.raises(_Stop):
            Trainer(spec, _StopAt(run, at), run).run()
    resumed = Trainer(spec, LocalSession(run), run)
    got = resumed.run()
    assert len(got) == 3
    for key in ("val_ne", "test_ne", "train_ne", "test_auc", "global_step"):
        assert [p[key] for p in got] == [p[key] for p in expected], key
    a, b = snapshot(whole.dmp), snapshot(resumed.dmp)
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- min_count


def _raw(spec, days: list[int]) -> list:
    source = make_source(spec.data)
    return [c for d in days for c in source.read_day(d, spec.data.max_examples_per_day)]


def _rank_values(chunks, feature: str, rank: int, world: int) -> np.ndarray:
    """The raw ids of ``feature`` of the rows a rank holds (global row % world == rank)."""
    out, seen = [], 0
    for c in chunks:
        values, lengths = c.sparse[feature]
        off = np.concatenate([[0], np.cumsum(lengths)])
        for i in range(len(lengths)):
            if (seen + i) % world == rank:
                out.append(values[off[i] : off[i + 1]])
        seen += len(lengths)
    return np.concatenate(out)


def test_min_count_maps_rare_and_unseen_ids_to_one_row_on_every_rank():
    k = 3
    regs = [
        {"type": "min_count", "k": k, "per_feature": {"ctx_0": 1}},
        {"type": "sse_graph", "p": 0.1},
    ]
    spec = parse_spec(spec_dict(regs, data={"test_days": [1]}))
    plain = RankData(parse_spec(spec_dict()), 0, 2)
    train, test = _raw(spec, spec.data.train_days), _raw(spec, spec.data.test_days)
    ranks = [RankData(spec, r, 2) for r in range(2)]
    for f in spec.data.sparse_feature_names():
        ids, n = np.unique(np.concatenate([c.sparse[f][0] for c in train]), return_counts=True)
        kept = set(ids[n >= k].tolist()) if f != "ctx_0" else set(ids.tolist())
        for r, d in enumerate(ranks):
            for part, chunks in ((d.train, train), (d.test, test)):
                raw = _rank_values(chunks, f, r, 2)
                mapped = np.array([x if x in kept else RARE for x in raw.tolist()], dtype=np.uint64)
                np.testing.assert_array_equal(part.rows[f][0], replica_rows(mapped, 0, HASH), err_msg=f)
                if f != "ctx_0":
                    assert (mapped == RARE).any() and (mapped != RARE).any(), f
            if f != "ctx_0":
                unseen = ~np.isin(_rank_values(test, f, r, 2), ids)
                shared = replica_rows(np.array([RARE]), 0, HASH)[0]
                assert unseen.any() and (d.test.rows[f][0][unseen] == shared).all(), f
            # sse_graph's neighbours read what the model reads for them
            if d.graph is not None and f in d.graph.graphs:
                g = d.graph.graphs[f]
                want = np.array([x if x in kept else RARE for x in g.nodes.tolist()], dtype=np.uint64)
                np.testing.assert_array_equal(g.rows[0], replica_rows(want, 0, HASH))
    # strata are by the raw ids' counts: min_count does not move an example's stratum
    np.testing.assert_array_equal(ranks[0].train.strata, plain.train.strata)
    np.testing.assert_array_equal(ranks[0].test.strata, plain.test.strata)


def test_a_warm_workers_dataset_cache_tells_min_count_data_apart():
    """min_count changes the built data (its id mapping): a warm worker must not hand a
    baseline run's cached dataset to a min_count run, nor one k's to another's."""
    from reg_helpers import make_spec

    from trainer.data.dataset import RankData

    base = make_spec()
    keys = {
        RankData.cache_key(s, 0, 1)
        for s in (
            base,
            make_spec([{"type": "min_count", "k": 2}]),
            make_spec([{"type": "min_count", "k": 5}]),
        )
    }
    assert len(keys) == 3
    # a regularizer that does not touch the data shares the baseline's dataset
    assert RankData.cache_key(make_spec([{"type": "dropout", "p": 0.1}]), 0, 1) == RankData.cache_key(
        base, 0, 1
    )
