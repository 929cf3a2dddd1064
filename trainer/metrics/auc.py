"""Exact AUC over a whole evaluation set, across ranks.

torchrec's ``AUC`` metric keeps a bounded window of predictions and orders tied
predictions arbitrarily, so on a large test set it scores only the last rows and on
ties it is not the ROC AUC. Here every rank keeps all of its (prediction, label,
weight) rows of one evaluation; ``compute`` gathers them from every rank and returns
the exact weighted ROC AUC, tied predictions counted as half (the same definition
as ``sklearn.metrics.roc_auc_score`` with ``sample_weight``).

Cost: 12 bytes per evaluation example on each rank while scoring, and the gathered
set (12 bytes x all examples) plus a sort on every rank at ``compute``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from trainer.collectives import Collectives


def weighted_auc(pred: torch.Tensor, label: torch.Tensor, weight: torch.Tensor) -> float | None:
    """Exact weighted ROC AUC with ties as half; None if a class has no weight."""
    pred, label, weight = pred.double(), label.double(), weight.double()
    order = torch.argsort(pred, descending=True)
    p, y, w = pred[order], label[order], weight[order]
    tp = torch.cumsum(w * y, 0)
    fp = torch.cumsum(w * (1.0 - y), 0)
    if p.numel() == 0 or tp[-1] <= 0 or fp[-1] <= 0:
        return None
    # the ROC curve's points are at the last row of each run of equal predictions
    last = torch.ones_like(p, dtype=torch.bool)
    last[:-1] = p[1:] != p[:-1]
    tp, fp = tp[last], fp[last]
    zero = tp.new_zeros(1)
    tp, fp = torch.cat([zero, tp]), torch.cat([zero, fp])
    area = torch.sum((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1]) / 2.0)
    return float(area / (tp[-1] * fp[-1]))


class ExactAUC:
    """Collects one evaluation's rows on this rank; ``compute`` is a collective (through
    the trainer's :class:`~trainer.collectives.Collectives`, on the session device)."""

    def __init__(self, collectives: Collectives) -> None:
        self.collectives = collectives
        self.device = collectives.device
        self._pred: list[torch.Tensor] = []
        self._label: list[torch.Tensor] = []
        self._weight: list[torch.Tensor] = []

    def update(self, pred: torch.Tensor, label: torch.Tensor, weight: torch.Tensor) -> None:
        self._pred.append(pred.detach().reshape(-1).float())
        self._label.append(label.detach().reshape(-1).float())
        self._weight.append(weight.detach().reshape(-1).float())

    def compute(self) -> float | None:
        """The AUC over every rank's rows (every rank must call it; all get the value)."""
        cols = (self._pred, self._label, self._weight)
        rows = torch.stack([torch.cat(x) if x else torch.zeros(0) for x in cols]).to(self.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            n = torch.tensor([rows.shape[1]], dtype=torch.int64, device=self.device)
            longest = int(max(int(s) for s in self.collectives.all_gather(n)))
            padded = torch.zeros(3, longest, device=self.device)  # weight-0 padding counts for nothing
            padded[:, : rows.shape[1]] = rows
            rows = torch.cat(self.collectives.all_gather(padded), dim=1)
        return weighted_auc(rows[0], rows[1], rows[2])
