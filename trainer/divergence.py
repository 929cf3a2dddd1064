"""Divergence (``training.on_divergence``): a non-finite loss or NE stops the run.

Each step's loss is checked on the device without a sync (:meth:`DivergenceCheck.note`);
the ranks compare at the loop's report points (:meth:`DivergenceCheck.check`: every
``metrics.report_every_steps`` and at a pass's end), all together.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist

from trainer.collectives import Collectives
from trainer.errors import DivergedError
from trainer.metrics.events import EventType, Phase


class DivergenceCheck:
    """One worker's watch for a non-finite loss. ``emit(type, pass, **payload)`` sends
    the event (rank 0's sink); ``on_divergence``: "fail" or "continue"."""

    def __init__(
        self,
        collectives: Collectives,
        world_size: int,
        on_divergence: str,
        emit: Callable[..., None],
    ) -> None:
        self.collectives = collectives
        self.world_size = world_size
        self.on_divergence = on_divergence
        self.emit = emit
        self._bad_step: torch.Tensor | None = None  # first step with a non-finite loss
        self._bad_loss: torch.Tensor | None = None

    def note(self, loss: torch.Tensor, global_step: int) -> None:
        """Remember (without a device sync) the first step whose loss was not finite;
        ``global_step``: the steps done before this one."""
        loss = loss.detach()
        if self._bad_step is None:
            self._bad_step = torch.zeros((), dtype=torch.long, device=loss.device)
            self._bad_loss = torch.zeros((), dtype=loss.dtype, device=loss.device)
        first = ~torch.isfinite(loss) & (self._bad_step == 0)
        self._bad_step = torch.where(first, global_step + 1, self._bad_step)
        assert self._bad_loss is not None  # set together with _bad_step
        self._bad_loss = torch.where(first, loss, self._bad_loss)

    def check(
        self, p: int, global_step: int, ne_value: float | None = 0.0, cpu_seconds: float | None = None
    ) -> float | None:
        """At a report point (all ranks together): a non-finite loss on any rank since
        the last check, or a non-finite NE (``None``), stops the run with
        "diverged at step N (loss = nan)" unless ``training.on_divergence`` is continue.

        ``cpu_seconds`` (end of a pass: this rank's training CPU time) rides on the same
        all-gather (no extra sync); the sum over the ranks is returned (None when not
        given)."""
        flag = torch.zeros(1, dtype=torch.float64)
        local_bad = self._bad_step is not None and int(self._bad_step) > 0
        if self._bad_step is not None and local_bad:
            flag[0] = float(self._bad_step)
        cpu_total = cpu_seconds
        if dist.is_initialized() and self.world_size > 1:
            mine = torch.tensor([flag[0].item(), cpu_seconds or 0.0], dtype=torch.float64)
            rows = torch.stack([t.cpu() for t in self.collectives.all_gather(mine)])
            flag = rows[:, 0].max().reshape(1)
            if cpu_seconds is not None:
                cpu_total = float(rows[:, 1].sum())
        self._raise_if_diverged(p, global_step, flag, local_bad, ne_value)
        return cpu_total

    def _raise_if_diverged(
        self, p: int, global_step: int, flag: torch.Tensor, local_bad: bool, ne_value: float | None
    ) -> None:
        ne_bad = ne_value is None or not math.isfinite(ne_value)
        if flag[0] == 0 and not ne_bad:
            return
        if flag[0] > 0:
            loss = float(self._bad_loss) if local_bad and self._bad_loss is not None else float("nan")
            msg = f"diverged at step {int(flag[0])} (loss = {loss})"
            if self._bad_step is not None:
                self._bad_step.zero_()
        else:
            msg = f"diverged at step {global_step} (NE = nan)"
        if self.on_divergence == "continue":
            self.emit(EventType.LIFECYCLE, p, phase="diverged", message=f"{msg}; continuing (on_divergence)")
            return
        self.emit(EventType.LIFECYCLE, p, phase=Phase.FAILED.value, message=msg)
        raise DivergedError(f"{msg}; lower the learning rates or set training.on_divergence: continue")
