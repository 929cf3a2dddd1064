"""The trainer on a real 2-process gloo world (tests/trainer/two_ranks.py) against the
same spec in this process at world size 1: initial embeddings independent of the
world size and placement, batch-norm statistics averaged before evaluation, and
every collective through the wrapper on the session device."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from tests.gloo_ranks import run_two_ranks
from tests.trainer.two_ranks import SPEC, local_tables
from trainer.loop import LocalSession, Trainer
from trainer.spec import parse_spec

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("two_ranks.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Both ranks' records of one 2-process run (started once for the module)."""
    out = tmp_path_factory.mktemp("two_ranks")
    run_two_ranks(SCRIPT, out, str(out))
    return [torch.load(out / f"rank_{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def one_rank_tables() -> dict[str, torch.Tensor]:
    """Initial tables of the same spec at world size 1 (gloo, this process)."""
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(parse_spec(SPEC), LocalSession(d), d)
        return {name: shards[0][1] for name, shards in local_tables(tr.dmp).items()}


def _assemble(ranks: list[dict]) -> dict[str, torch.Tensor]:
    parts: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for r in ranks:
        for name, shards in r["tables"].items():
            parts.setdefault(name, []).extend(shards)
    return {name: torch.cat([t for _, t in sorted(p, key=lambda x: x[0])]) for name, p in parts.items()}


@pytest.mark.slow
def test_initial_embeddings_do_not_depend_on_world_size_or_placement(ranks, one_rank_tables):
    two = _assemble(ranks)
    assert set(two) == set(one_rank_tables) and len(two) == 4
    assert all(r["tables"] for r in ranks), "one rank holds no table: placement was not exercised"
    for name, table in one_rank_tables.items():
        assert torch.equal(two[name], table), f"{name}: other initial weights on 2 workers than on 1"
    names = sorted(one_rank_tables)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(one_rank_tables[a], one_rank_tables[b]), f"{a} and {b} start equal"


@pytest.mark.slow
def test_batch_norm_statistics_are_averaged_over_ranks_before_evaluation(ranks):
    trained = [r["bn_trained"] for r in ranks]
    evaluated = [r["bn_eval"] for r in ranks]
    assert len(trained[0]) == 2 * 3  # running mean and var of 3 batch-norm layers
    # each rank's training saw only its own batches
    assert any(not torch.equal(a, b) for a, b in zip(*trained, strict=True))
    for i, (a, b) in enumerate(zip(*trained, strict=True)):
        mean = (a.double() + b.double()) / 2
        for r in range(2):
            torch.testing.assert_close(evaluated[r][i].double(), mean, atol=1e-6, rtol=1e-6)
        assert torch.equal(evaluated[0][i], evaluated[1][i])


@pytest.mark.slow
def test_two_rank_collectives_go_through_the_wrapper_on_the_session_device(ranks):
    for r in ranks:
        names = [name for name, _ in r["calls"]]
        # all_reduce: batch-norm statistics and stratum counts; all_gather: the exact AUC
        assert set(names) <= {"all_reduce", "all_gather"}, names
        assert names.count("all_reduce") >= 2 and "all_gather" in names, names
        for _, devices in r["calls"]:
            assert devices and set(devices) == {r["device"]}


@pytest.mark.slow
def test_pass_cpu_seconds_are_summed_over_the_ranks(ranks):
    """The pass's training CPU time rides on the end-of-pass divergence collective: both
    ranks return the same total, the sum of each rank's own process time."""
    own = [r["cpu_own"] for r in ranks]
    assert all(c > 0 for c in own), own
    assert ranks[0]["cpu_total"] == ranks[1]["cpu_total"]
    assert ranks[0]["cpu_total"] == pytest.approx(sum(own), rel=1e-9)
    assert ranks[0]["cpu_total"] > max(own)  # not one rank's figure
