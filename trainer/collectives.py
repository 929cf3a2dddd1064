"""The one door to ``torch.distributed`` collectives in the trainer.

NCCL (the GPU backend) only takes CUDA tensors; gloo takes CPU tensors. Every
collective the trainer issues itself (not the ones inside TorchRec's sharded modules
and metrics, which place their own tensors) goes through :class:`Collectives`, which
moves the tensors to the session device first and checks them there before the call,
so one code path serves CPU and GPU runs. tests/trainer/test_collectives.py checks
that no other module of ``trainer/`` calls a ``torch.distributed`` collective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist


def _normalise(device: torch.device | str) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and d.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return d


class Collectives:
    """Collectives on the tensors of one session's device (``session.device``)."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = _normalise(device)

    def on_device(self, t: torch.Tensor) -> torch.Tensor:
        return t if t.device == self.device else t.to(self.device)

    def _run(self, fn: Callable[..., object], tensors: Sequence[torch.Tensor], *args, **kwargs) -> None:
        """Call the torch.distributed function ``fn`` (every collective passes here)."""
        wrong = [str(t.device) for t in tensors if t.device != self.device]
        if wrong:
            raise RuntimeError(
                f"collective {fn.__name__}: tensors on {wrong}, session device is {self.device}"
            )
        fn(*args, **kwargs)

    # ---- the collectives the trainer uses

    def all_reduce(self, t: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
        """All-reduce of ``t``; returns the result on the session device (``t`` itself
        when it already lives there)."""
        x = self.on_device(t)
        self._run(dist.all_reduce, [x], x, op=op)
        return x

    def average_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Replace each tensor by its mean over the ranks (in place, one flat
        all-reduce; gloo has no AVG op, so SUM / world size)."""
        tensors = [t for t in tensors if t.numel() > 0]
        if not tensors:
            return
        flat = torch.cat([self.on_device(t).detach().reshape(-1).to(torch.float64) for t in tensors])
        flat = self.all_reduce(flat)
        flat /= dist.get_world_size()
        pos = 0
        with torch.no_grad():
            for t in tensors:
                n = t.numel()
                t.copy_(flat[pos : pos + n].view(t.shape).to(t.dtype))
                pos += n

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``t`` (same shape on all ranks), on the session device."""
        x = self.on_device(t)
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        self._run(dist.all_gather, [x, *out], out, x)
        return out

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank ``src``'s ``t`` on every rank (on the session device)."""
        x = self.on_device(t)
        self._run(dist.broadcast, [x], x, src=src)
        return x
