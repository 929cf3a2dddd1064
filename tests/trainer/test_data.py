"""Data sources, hashing, strata, shuffling and per-rank slicing, on small files written here."""

import numpy as np
import pandas as pd
import pytest

from tests.trainer.specs import tiny_spec_dict
from trainer.data.dataset import RankData
from trainer.data.files import CriteoTSV, Table
from trainer.data.hashing import MISSING, base_hash_column, base_hash_ints, base_hash_strings, replica_rows
from trainer.data.synthetic import SyntheticClicks
from trainer.errors import DataError
from trainer.spec import SyntheticSpec, TableColumns, parse_spec

# ------------------------------------------------------------------ hashing


def test_bad_ids_hash_into_range_without_crashing():
    ints = np.array([-1, -(2**63), 2**63 - 1, 0, 42], dtype=np.int64)
    strs = ["a", None, float("nan"), "", "ffffffffffffffffffffffffffff", "-3"]
    for base in (
        base_hash_ints(ints),
        base_hash_strings(strs),
        base_hash_column(pd.Series([1.0, np.nan, 1e30, -7.0])),
    ):
        for r in range(3):
            rows = replica_rows(base, r, 1000)
            assert rows.dtype == np.int64 and rows.min() >= 0 and rows.max() < 1000
    assert base_hash_strings([None])[0] == MISSING == base_hash_strings([""])[0]


def test_replicas_are_independent_hashes():
    base = base_hash_ints(np.arange(10_000))
    r0, r1 = replica_rows(base, 0, 1000), replica_rows(base, 1, 1000)
    assert (r0 == r1).mean() < 0.01  # ~1/1000 by chance
    # roughly uniform occupancy
    assert np.bincount(r0, minlength=1000).max() < 40


def test_hashing_is_stable_across_calls():
    assert (base_hash_strings(["x", "y"]) == base_hash_strings(["x", "y"])).all()
    assert (
        replica_rows(base_hash_ints(np.array([7])), 0, 97)[0]
        == replica_rows(base_hash_ints(np.array([7])), 0, 97)[0]
    )


# ------------------------------------------------------------------ synthetic


def _day(spec: SyntheticSpec, day: int):
    (chunk,) = list(SyntheticClicks(spec).read_day(day))
    return chunk


def test_synthetic_is_deterministic_by_seed():
    s = SyntheticSpec(examples_per_day=5000, num_users=300, num_ads=100)
    a, b = _day(s, 0), _day(s, 0)
    assert (a.label == b.label).all() and (a.dense == b.dense).all()
    for k in a.sparse:
        assert (a.sparse[k][0] == b.sparse[k][0]).all() and (a.sparse[k][1] == b.sparse[k][1]).all()
    c = _day(SyntheticSpec(examples_per_day=5000, num_users=300, num_ads=100, seed=1), 0)
    assert not (a.label == c.label).all()
    d1 = _day(s, 1)
    assert not (a.sparse["user_id"][0] == d1.sparse["user_id"][0]).all()  # another day, new impressions


def test_synthetic_has_power_law_ads_and_a_sane_ctr():
    s = SyntheticSpec(examples_per_day=50_000, num_users=2000, num_ads=1000, base_ctr=0.1)
    ch = _day(s, 0)
    _, counts = np.unique(ch.sparse["ad_id"][0], return_counts=True)
    counts = np.sort(counts)[::-1]
    assert counts[0] > 50 * np.median(counts)  # heavy head, long tail
    assert 0.03 < ch.label.mean() < 0.3
    assert set(ch.sparse) == {"user_id", "ad_id", "ad_history", "ctx_0", "ctx_1", "ctx_2"}
    lengths = ch.sparse["ad_history"][1]
    assert lengths.min() == 0 and lengths.max() == s.history_length
    assert ch.dense.shape == (50_000, s.num_dense_features)


# ------------------------------------------------------------------ criteo


def _criteo_line(label, ints, cats):
    return "\t".join(
        [str(label), *["" if v is None else str(v) for v in ints], *["" if v is None else v for v in cats]]
    )


def test_criteo_reader_handles_missing_values(tmp_path):
    rows = [
        _criteo_line(1, [1, 2, None, -4, *[0] * 9], ["68fd1e64", None, *["abc"] * 24]),
        _criteo_line(0, [None] * 13, [None] * 26),
        _criteo_line(0, list(range(13)), ["ffffffff"] * 26),
    ]
    (tmp_path / "day_0.tsv").write_text("\n".join(rows) + "\n")
    (chunk,) = list(CriteoTSV(str(tmp_path / "day_{day}.tsv")).read_day(0))
    assert chunk.label.tolist() == [1.0, 0.0, 0.0]
    assert chunk.dense.shape == (3, 13)
    assert np.isfinite(chunk.dense).all()
    assert chunk.dense[0, 3] == 0.0  # negative -> log1p(max(x, 0)) = 0
    assert chunk.dense[1].sum() == 0.0  # all missing -> 0
    assert chunk.sparse["C2"][0][0] == MISSING and chunk.sparse["C1"][0][1] == MISSING
    assert len(chunk.sparse) == 26


def test_criteo_reader_rejects_bad_labels_and_missing_days(tmp_path):
    (tmp_path / "day_0.tsv").write_text(_criteo_line(7, [0] * 13, ["a"] * 26) + "\n")
    with pytest.raises(DataError, match="label"):
        list(CriteoTSV(str(tmp_path / "day_{day}.tsv")).read_day(0))
    with pytest.raises(DataError, match="day 3"):
        list(CriteoTSV(str(tmp_path / "day_{day}.tsv")).read_day(3))


# ------------------------------------------------------------------ table


def _ratings_frame():
    return pd.DataFrame(
        {
            "user": [1, 2, 3, -5, 2**40, 6],
            "item": ["a", "b", None, "c", "a", "b"],
            "genres": ["x|y", "", None, "z", "x|x|y", "y"],
            "rating": [5, 3, 4, 1, 4, 2],
            "age": [20.0, None, 30.0, 40.0, 50.0, 60.0],
            "day": [0, 0, 0, 1, 1, 1],
        }
    )


COLUMNS = TableColumns.model_validate(
    {
        "label": "rating",
        "label_threshold": 4,
        "day": "day",
        "sparse": ["user", "item", {"name": "genres", "multi_valued": True}],
        "dense": ["age"],
    }
)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_reader_single_and_multi_valued(tmp_path, suffix):
    df = _ratings_frame()
    path = tmp_path / f"ratings{suffix}"
    df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path)
    t = Table(str(path), COLUMNS)
    (d0,) = list(t.read_day(0))
    assert d0.label.tolist() == [1.0, 0.0, 1.0]  # rating >= 4
    values, lengths = d0.sparse["genres"]
    assert lengths.tolist() == [2, 0, 0] and len(values) == 2
    assert d0.sparse["item"][0][2] == MISSING
    assert d0.dense[:, 0].tolist() == [20.0, 0.0, 30.0]  # missing dense -> 0
    (d1,) = list(t.read_day(1))
    assert d1.sparse["genres"][1].tolist() == [1, 3, 1]
    assert len(d1) == 3


def test_table_reader_errors_name_the_problem(tmp_path):
    path = tmp_path / "r.csv"
    _ratings_frame().drop(columns=["age"]).to_csv(path, index=False)
    with pytest.raises(DataError, match="age"):
        list(Table(str(path), COLUMNS).read_day(0))
    cols = COLUMNS.model_copy(update={"label_threshold": None, "dense": []})
    _ratings_frame().to_csv(path, index=False)
    with pytest.raises(DataError, match="label_threshold"):
        list(Table(str(path), cols).read_day(0))


# ------------------------------------------------------------------ per-rank data


def _spec(**data):
    d = tiny_spec_dict()
    d["data"].update(data)
    return parse_spec(d)


def test_ranks_split_the_data_exactly_and_agree_on_steps():
    spec = _spec()
    whole = RankData(spec, 0, 1)
    parts = [RankData(spec, r, 3) for r in range(3)]
    assert sum(len(p.train) for p in parts) == len(whole.train) == 4000
    assert len({p.steps_per_pass for p in parts}) == 1
    assert len({p.eval_steps for p in parts}) == 1
    # same strata definition on every rank (counts over the whole training day)
    assert all((p.stratum_counts[1] == whole.stratum_counts[1]).all() for p in parts)
    labels = np.sort(np.concatenate([p.train.label for p in parts]))
    assert (labels == np.sort(whole.train.label)).all()


def test_eval_pads_with_weight_zero_and_covers_every_test_row():
    data = RankData(_spec(), 0, 1)
    batches = list(data.eval_batches())
    assert sum(float(b.weights.sum()) for b in batches) == len(data.test) == 4000
    assert all(len(b) == 256 for b in batches)


def test_strata_follow_training_counts():
    data = RankData(_spec(frequent_min_count=50, rare_max_count=5), 0, 1)
    uniq, counts = data.stratum_counts
    assert counts.sum() == 4000
    strata = data.train.strata
    # every training example's ad has count >= 1; frequent ads carry most traffic
    assert (strata == 0).mean() > 0.3
    assert set(np.unique(strata)) <= {0, 1, 2}


@pytest.mark.parametrize("mode", ["none", "within_partition", "across_partitions", "all"])
def test_shuffle_modes_visit_each_example_once_per_pass(mode):
    spec = _spec(shuffle=mode, train_days=[0, 2], test_days=[1], batch_size=100)
    data = RankData(spec, 0, 1)
    order0, order1 = data._order(0), data._order(1)
    assert sorted(order0.tolist()) == list(range(len(data.train)))
    days = data.train.day_of_row[order0]
    if mode == "none":
        assert (order0 == np.arange(len(order0))).all()
    if mode in ("none", "within_partition", "across_partitions"):
        assert (np.diff(days) != 0).sum() == 1  # days stay contiguous
    if mode == "within_partition":
        assert not (order0 == order1).all() and (days[:4000] == 0).all()
    if mode == "across_partitions":  # the day order is drawn per pass, not fixed
        firsts = {int(data.train.day_of_row[data._order(p)[0]]) for p in range(8)}
        assert firsts == {0, 2}
    if mode == "all":
        assert (np.diff(days) != 0).sum() > 100


def _day_sequence(data: RankData, pass_idx: int) -> np.ndarray:
    """The day of every row this rank trains on in pass ``pass_idx``, in step order."""
    order = data._order(pass_idx)[: data.steps_per_pass * data.batch_size]
    return data.train.day_of_row[order]


def test_across_partitions_every_rank_is_on_the_same_day_at_every_step():
    # odd day sizes: rank 0 holds one more row of each day than rank 1
    synthetic = {"examples_per_day": 601, "num_users": 300, "num_ads": 100}
    spec = _spec(
        shuffle="across_partitions",
        train_days=[0, 2, 3, 4],
        test_days=[1],
        batch_size=20,
        synthetic=synthetic,
    )
    ranks = [RankData(spec, r, 2) for r in range(2)]
    assert len(ranks[0].train) == len(ranks[1].train) + 4
    day_orders = set()
    for p in range(6):
        seq0, seq1 = (_day_sequence(d, p) for d in ranks)
        assert (seq0 == seq1).all(), f"pass {p}: ranks train on different days at the same step"
        assert (np.diff(seq0) != 0).sum() == 3  # days stay contiguous
        day_orders.add(tuple(dict.fromkeys(seq0.tolist())))
        # every rank still visits each of its rows at most once
        order = ranks[0]._order(p)
        assert sorted(order.tolist()) == list(range(len(ranks[0].train)))
    assert len(day_orders) > 2, f"days were hardly reordered across passes: {day_orders}"


def test_batches_are_kjts_with_one_key_per_feature_replica():
    spec = _spec()
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"num_replicas": 2})})
    data = RankData(spec, 0, 1)
    b = next(data.train_batches(0))
    assert b.sparse.keys() == [f"{f}__r{r}" for f in data.features for r in range(2)]
    assert int(b.sparse.values().max()) < spec.model.hash_size
    assert b.dense.shape == (256, 4) and b.labels.shape == (256,)
    jt = b.sparse.to_dict()
    # same ids, different rows in the two replicas
    assert not (jt["user_id__r0"].values() == jt["user_id__r1"].values()).all()


def test_too_little_data_is_a_clear_error():
    d = tiny_spec_dict()
    d["data"]["batch_size"] = 8192
    d["metrics"]["window_size"] = 8192
    with pytest.raises(DataError, match="data.batch_size"):
        RankData(parse_spec(d), 0, 1)


def test_prefetch_pins_batches_in_its_thread_only_when_asked():
    """CUDA workers page-lock host batches (async H2D copies) in the prefetch thread, off
    the step's path; CPU workers never pin. Pure logic: page-locking itself needs CUDA
    (torch refuses pin_memory without an accelerator), so a stand-in records the calls."""
    import threading

    from trainer.data.prefetch import prefetch

    class Item:
        def __init__(self, i: int, pinned_by: str | None = None) -> None:
            self.i, self.pinned_by = i, pinned_by

        def pin_memory(self) -> "Item":
            return Item(self.i, threading.current_thread().name)

    got = list(prefetch(iter([Item(i) for i in range(5)]), 2, pin=True))
    assert [b.i for b in got] == list(range(5))
    assert {b.pinned_by for b in got} == {"rectrain-prefetch"}  # not the consumer's thread
    assert all(b.pinned_by is None for b in prefetch(iter([Item(i) for i in range(3)]), 2))
    assert [b.pinned_by for b in prefetch(iter([Item(0)]), 0, pin=True)] == [threading.current_thread().name]
