"""Every torch.distributed collective of the trainer goes through
``trainer.collectives.Collectives``, which puts the tensors on ``session.device``
(NCCL takes only CUDA tensors). On CPU: a static check of trainer/, the move and the
check with a fake device, and the trainer's evaluation at world size 1."""

from __future__ import annotations

import ast
import tempfile
from pathlib import Path

import pytest
import torch

from tests.trainer.specs import tiny_spec_dict
from trainer.collectives import Collectives
from trainer.loop import LocalSession, Trainer
from trainer.spec import parse_spec

TRAINER = Path(__file__).resolve().parents[2] / "trainer"
TENSOR_COLLECTIVES = {
    "all_reduce",
    "all_reduce_coalesced",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_coalesced",
    "broadcast",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "all_to_all",
    "all_to_all_single",
    "gather",
    "scatter",
    "send",
    "recv",
    "isend",
    "irecv",
}


def test_no_module_of_the_trainer_calls_a_collective_outside_the_wrapper():
    offenders = []
    for path in sorted(TRAINER.rglob("*.py")):
        if path == TRAINER / "collectives.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        dist_names = {"torch.distributed"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                dist_names |= {a.asname or a.name for a in node.names if a.name == "torch.distributed"}
            elif isinstance(node, ast.ImportFrom) and node.module == "torch.distributed":
                offenders += [
                    f"{path}:{node.lineno} imports {a.name}"
                    for a in node.names
                    if a.name in TENSOR_COLLECTIVES
                ]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in TENSOR_COLLECTIVES:
                if ast.unparse(node.value) in dist_names:
                    offenders.append(f"{path.relative_to(TRAINER.parent)}:{node.lineno} {ast.unparse(node)}")
    assert not offenders, "call these through trainer.collectives.Collectives:\n" + "\n".join(offenders)


class _Recorder(Collectives):
    """Records the devices of the tensors each collective gets, then runs it (or,
    with ``fake``, skips the real call: for devices gloo cannot take)."""

    def __init__(self, device, fake: bool = False) -> None:
        super().__init__(device)
        self.fake = fake
        self.calls: list[tuple[str, list[torch.device]]] = []

    def _run(self, fn, tensors, *args, **kwargs):
        self.calls.append((fn.__name__, [t.device for t in tensors]))
        if self.fake:
            wrong = [t.device for t in tensors if t.device != self.device]
            assert not wrong, wrong
            return
        super()._run(fn, tensors, *args, **kwargs)


def test_the_wrapper_moves_tensors_to_the_session_device_and_refuses_others():
    meta = _Recorder(torch.device("meta"), fake=True)
    out = meta.all_reduce(torch.ones(3))
    assert out.device == torch.device("meta")
    meta.broadcast(torch.ones(2), src=0)
    assert [c for c in meta.calls] == [
        ("all_reduce", [torch.device("meta")]),
        ("broadcast", [torch.device("meta")]),
    ]
    # the check itself, before torch.distributed sees the tensor
    with pytest.raises(RuntimeError, match="session device is cpu"):
        Collectives("cpu")._run(torch.distributed.all_reduce, [torch.ones(1, device="meta")])


def test_trainer_evaluation_collectives_are_on_the_session_device(tmp_path):
    spec = tiny_spec_dict(model={"batch_norm": True})
    spec["data"]["synthetic"]["examples_per_day"] = 1024
    with tempfile.TemporaryDirectory() as d:
        session = LocalSession(d)
        tr = Trainer(parse_spec(spec), session, d)
        assert tr.collectives.device == session.device
        tr.collectives = rec = _Recorder(session.device)
        out = tr.evaluate()
    assert sum(out["examples_by_stratum"].values()) == 1024
    names = [n for n, _ in rec.calls]
    assert names.count("all_reduce") >= 2, names  # batch-norm statistics and stratum counts
    assert all(devs and all(dv == session.device for dv in devs) for _, devs in rec.calls)


def test_average_is_the_mean_over_ranks_in_place():
    # world size 1 (this process's gloo group): the mean of one rank is itself, in place
    LocalSession(tempfile.mkdtemp())
    a, b = torch.arange(4.0), torch.tensor([[1.5, 2.5]], dtype=torch.float64)
    ids = (id(a), id(b))
    Collectives("cpu").average_([a, b])
    assert (id(a), id(b)) == ids and torch.equal(a, torch.arange(4.0)) and b.dtype == torch.float64
