"""sse_graph on the data path: every replaced id is a graph neighbour (the synthetic
ground-truth cluster; ids sharing a graph_column value in a table), at rate p,
consistent across replicas, deterministic, training batches only; the spec refuses
criteo and incomplete table settings naming the field."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from reg_helpers import spec_dict

from trainer.data.dataset import RankData
from trainer.data.hashing import base_hash_strings, replica_rows
from trainer.data.synthetic import SyntheticClicks
from trainer.errors import SpecError
from trainer.spec import parse_spec

BIG = {
    "model": {"num_replicas": 2, "hash_size": 1_000_000},
    "data": {"batch_size": 256, "synthetic": {"examples_per_day": 1024}},
    "metrics": {"window_size": 512},
}


def _values(batch, key: str) -> np.ndarray:
    return batch.sparse[key].values().numpy()


def test_synthetic_ids_are_replaced_by_ids_of_their_cluster_at_rate_p():
    p = 0.3
    spec = parse_spec(spec_dict([{"type": "sse_graph", "p": p, "per_feature": {"user_id": 0.6}}], **BIG))
    data = RankData(spec)
    plain = RankData(parse_spec(spec_dict([], **BIG)))
    truth = SyntheticClicks(spec.data.synthetic)
    assert set(data.graph.features) == {"user_id", "ad_id", "ad_history"}
    b = plain.batch_size
    for step, (got, ref) in enumerate(zip(data.train_batches(0), plain.train_batches(0), strict=True)):
        rows = np.arange(step * b, (step + 1) * b)  # shuffle none: the pass reads in order
        for f, rate in [("user_id", 0.6), ("ad_id", p), ("ad_history", p)]:
            g = data.graph.graphs[f]
            hashes, cluster = truth.clusters(f)
            cl_of_node = cluster[np.searchsorted(hashes, g.nodes)]
            by_rows = {(int(a), int(c)): y for y, (a, c) in enumerate(zip(g.rows[0], g.rows[1], strict=True))}
            off = data.train.offsets[f]
            x = np.concatenate([data.graph_nodes[f][off[r] : off[r + 1]] for r in rows])
            assert np.array_equal(_values(ref, f"{f}__r0"), g.rows[0][x])  # unchanged source ids
            v0, v1 = _values(got, f"{f}__r0"), _values(got, f"{f}__r1")
            y = np.array([by_rows[(int(a), int(c))] for a, c in zip(v0, v1, strict=True)])  # replicas agree
            moved = y != x
            assert (cl_of_node[y[moved]] == cl_of_node[x[moved]]).all(), f  # same cluster, never another
            n = len(x)
            assert abs(moved.mean() - rate) <= 4 * (rate * (1 - rate) / n) ** 0.5 + 1e-9, (f, moved.mean())
        for key in ("ctx_0__r0", "ctx_0__r1"):
            assert np.array_equal(_values(got, key), _values(ref, key))
        if step == 0:
            again = next(data.train_batches(0))  # same (seed, pass, rank, step): same draws
            assert np.array_equal(_values(again, "ad_id__r0"), _values(got, "ad_id__r0"))
            other_pass = next(data.train_batches(1))
            assert not np.array_equal(_values(other_pass, "ad_id__r0"), _values(got, "ad_id__r0"))
    # evaluation batches never change
    for got, ref in zip(data.eval_batches(), plain.eval_batches(), strict=True):
        for key in got.sparse.keys():
            assert np.array_equal(_values(got, key), _values(ref, key))


GENRES = {0: "a", 1: "a|b", 2: "b", 3: "c", 4: "c", 5: "d", 6: "b|e", 7: "e", 8: ""}  # 8: no genre


def _table_spec(tmp_path, regs):
    rng = np.random.default_rng(0)
    n = 400
    item = np.concatenate([np.arange(len(GENRES)), rng.integers(0, len(GENRES), n - len(GENRES))])
    df = pd.DataFrame(
        {
            "user": rng.integers(0, 30, n),
            "item": item,
            "genre": [GENRES[i] for i in item],
            "label": rng.integers(0, 2, n),
            "day": np.r_[np.zeros(300, dtype=int), np.ones(100, dtype=int)],
        }
    )
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    over = {
        "model": {"hash_size": 1_000_000, "num_replicas": 2, "interaction": "concat"},
        "data": {
            "source": "table",
            "path": str(path),
            "columns": {
                "label": "label",
                "day": "day",
                "sparse": ["user", "item", {"name": "genre", "multi_valued": True}],
                "dense": [],
            },
            "batch_size": 32,
        },
    }
    return spec_dict(regs, **over)


def test_table_neighbours_are_ids_sharing_a_graph_column_value(tmp_path):
    spec = parse_spec(
        _table_spec(
            tmp_path, [{"type": "sse_graph", "p": 0.5, "features": ["item"], "graph_column": "genre"}]
        )
    )
    data = RankData(spec)
    g = data.graph.graphs["item"]
    node_of_item = {i: int(g.index(base_hash_strings([str(i)]))[0]) for i in GENRES}
    assert node_of_item[8] == -1 and len(g.nodes) == len(GENRES) - 1  # no genre: not in the graph
    item_of_node = {v: k for k, v in node_of_item.items() if v >= 0}
    for i, gi in GENRES.items():
        if not gi:
            continue
        expect = {j for j, gj in GENRES.items() if j != i and set(gi.split("|")) & set(gj.split("|"))}
        assert {item_of_node[int(y)] for y in g.neighbours(node_of_item[i])} == expect, i
    # every replaced occurrence is a neighbour; the lonely item 5 never moves
    by_rows = {
        (int(a), int(c)): item_of_node[y] for y, (a, c) in enumerate(zip(g.rows[0], g.rows[1], strict=True))
    }
    hashed8 = base_hash_strings(["8"])
    by_rows[(int(replica_rows(hashed8, 0, 1_000_000)[0]), int(replica_rows(hashed8, 1, 1_000_000)[0]))] = 8
    plain = RankData(parse_spec(_table_spec(tmp_path, [])))
    moved = total = 0
    for got, ref in zip(data.train_batches(0), plain.train_batches(0), strict=True):
        src = [
            by_rows[(int(a), int(c))]
            for a, c in zip(_values(ref, "item__r0"), _values(ref, "item__r1"), strict=True)
        ]
        new = [
            by_rows[(int(a), int(c))]
            for a, c in zip(_values(got, "item__r0"), _values(got, "item__r1"), strict=True)
        ]
        for i, j in zip(src, new, strict=True):
            total += 1
            if i != j:
                moved += 1
                assert set(GENRES[i].split("|")) & set(GENRES[j].split("|")), (i, j)
            if i in (5, 8):  # no other id shares its genre / it has none
                assert j == i
        for key in ("user__r0", "genre__r0", "genre__r1"):
            assert np.array_equal(_values(got, key), _values(ref, key))
    assert 0.3 < moved / total < 0.6, moved / total


@pytest.mark.parametrize(
    "over,reg,prefix",
    [
        ({"data": {"source": "criteo", "path": "d_{day}.tsv"}}, {}, "regularizers.0.type: sse_graph"),
        ({}, {"graph_column": "ctx_0"}, "regularizers.0.graph_column:"),
        ({}, {"features": ["ctx_0"]}, "regularizers.0.features:"),
        ({}, {"features": ["ad_id", "ad_id"]}, "regularizers.0.features:"),
        ({}, {"features": ["ad_id"], "per_feature": {"user_id": 0.1}}, "regularizers.0.per_feature:"),
        ({}, {"features": []}, "regularizers.0.features:"),
        ({}, {"p": 1.0}, "regularizers.0.p:"),
    ],
)
def test_invalid_sse_graph_settings_are_refused(over, reg, prefix):
    with pytest.raises(SpecError) as e:
        parse_spec(spec_dict([{"type": "sse_graph", "p": 0.1, **reg}], **over))
    assert str(e.value).startswith(prefix), str(e.value)
    if "criteo" in str(over):
        assert "sse_se" in str(e.value)


@pytest.mark.parametrize(
    "reg,prefix",
    [
        ({"features": ["item"]}, "regularizers.0.graph_column: required"),
        ({"graph_column": "genre"}, "regularizers.0.features: required"),
        ({"graph_column": "nope", "features": ["item"]}, "regularizers.0.graph_column:"),
        ({"graph_column": "genre", "features": ["genre"]}, "regularizers.0.features:"),
    ],
)
def test_table_sse_graph_needs_graph_column_and_features(tmp_path, reg, prefix):
    with pytest.raises(SpecError) as e:
        parse_spec(_table_spec(tmp_path, [{"type": "sse_graph", "p": 0.1, **reg}]))
    assert str(e.value).startswith(prefix), str(e.value)
