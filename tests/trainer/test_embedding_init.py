"""Per-table initial embeddings: a function of (seed, table name) and the row, never
of the row range a shard asks for (row-wise shards cut tables anywhere)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.model import embedding_init
from trainer.model.embedding_init import table_rows


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(embedding_init, "ROWS_PER_BLOCK", 16)


def _rows(seed, name, start, count, n=50, d=4):
    b = math.sqrt(1 / n)
    return table_rows(seed, name, n, d, start, count, low=-b, high=b)


def test_any_row_split_gives_the_same_table(small_blocks):
    full = _rows(1, "t_a", 0, 50)
    for cuts in ([0, 7, 33, 50], [0, 16, 32, 48, 50], [0, 1, 49, 50]):
        parts = [_rows(1, "t_a", a, b - a) for a, b in zip(cuts, cuts[1:], strict=False)]
        assert torch.equal(torch.cat(parts), full)
    assert full.abs().max() <= math.sqrt(1 / 50) and full.std() > 0.05


def test_tables_and_seeds_draw_different_weights(small_blocks):
    a = _rows(1, "t_a", 0, 50)
    assert not torch.equal(a, _rows(1, "t_b", 0, 50))
    assert not torch.equal(a, _rows(2, "t_a", 0, 50))
    assert torch.equal(a, _rows(1, "t_a", 0, 50))
    # blocks of one table are not copies of each other
    assert not torch.equal(a[:16], a[16:32])


def test_rows_drawn_into_a_given_tensor_in_place(small_blocks):
    """The trainer draws whole-row shards straight into the table's weights (no
    full-size scratch copy): same values as a fresh tensor, written through views."""
    b = math.sqrt(1 / 50)
    table = torch.full((60, 4), 7.0)
    shard = table[5:45]  # a view, as split_embedding_weights returns
    got = table_rows(1, "t_a", 50, 4, 10, 40, low=-b, high=b, out=shard)
    assert got.data_ptr() == shard.data_ptr()
    assert torch.equal(table[5:45], _rows(1, "t_a", 10, 40))
    assert torch.equal(table[:5], torch.full((5, 4), 7.0)) and torch.equal(
        table[45:], torch.full((15, 4), 7.0)
    )
    with pytest.raises(ValueError, match="expected"):
        table_rows(1, "t_a", 50, 4, 10, 40, low=-b, high=b, out=torch.empty(39, 4))
