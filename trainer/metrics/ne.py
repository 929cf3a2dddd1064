"""NE, calibration, AUC and per-stratum NE through ``torchrec.metrics``.

NE = average log loss / entropy of the background CTR of the same examples
(He et al., 2014). We never compute it by hand in the trainer: a
``RecMetricModule`` holds the (windowed and lifetime) states, and ``compute()``
all-reduces them across ranks, so every rank must call it at the same point.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchrec.metrics.metric_module import RecMetricModule, generate_metric_module
from torchrec.metrics.metrics_config import MetricsConfig, RecMetricDef, RecMetricEnum, RecTaskInfo

from trainer.data.batch import STRATA, Batch

TASK = RecTaskInfo(name="ctr", label_name="label", prediction_name="prediction", weight_name="weight")


def make_metric_module(
    *,
    window_size: int,
    batch_size: int,
    world_size: int,
    rank: int,
    device: torch.device,
    with_auc: bool = False,
    with_strata: bool = False,
) -> RecMetricModule:
    """A metric module for one phase: NE + calibration (+ AUC, + NE per stratum)."""
    window = max(window_size, batch_size * world_size)
    metrics = {
        RecMetricEnum.NE: RecMetricDef(rec_tasks=[TASK], window_size=window),
        RecMetricEnum.CALIBRATION: RecMetricDef(rec_tasks=[TASK], window_size=window),
    }
    if with_auc:
        metrics[RecMetricEnum.AUC] = RecMetricDef(rec_tasks=[TASK], window_size=window)
    if with_strata:
        metrics[RecMetricEnum.SEGMENTED_NE] = RecMetricDef(
            rec_tasks=[TASK],
            window_size=window,
            arguments={"grouping_keys": "stratum", "num_groups": len(STRATA)},
        )
    cfg = MetricsConfig(rec_tasks=[TASK], rec_metrics=metrics, throughput_metric=None, state_metrics=[])
    return generate_metric_module(
        RecMetricModule,
        cfg,
        batch_size=batch_size,
        world_size=world_size,
        my_rank=rank,
        state_metrics_mapping={},
        device=device,
    )


def update(module: RecMetricModule, logits: torch.Tensor, batch: Batch) -> None:
    module.update(
        {
            "prediction": torch.sigmoid(logits.detach()).to(torch.float32),
            "label": batch.labels,
            "weight": batch.weights,
            "stratum": batch.strata,
        }
    )


def update_probs(module: RecMetricModule, probs: torch.Tensor, batch: Batch) -> None:
    """Feed known probabilities (the synthetic source's true click probabilities: the
    oracle) instead of a model's logits."""
    module.update(
        {
            "prediction": probs.detach().to(torch.float32),
            "label": batch.labels,
            "weight": batch.weights,
            "stratum": batch.strata,
        }
    )


def _f(x: Any) -> float | None:
    v = float(x.reshape(-1)[0]) if isinstance(x, torch.Tensor) else float(x)
    return None if math.isnan(v) or math.isinf(v) else v


def summarize(computed: dict[str, Any]) -> dict[str, Any]:
    """Flatten torchrec's ``'ne-ctr|window_ne'``-style keys into our field names."""
    out: dict[str, Any] = {}
    by_stratum: dict[str, float | None] = {}
    for key, val in computed.items():
        metric = key.split("|", 1)[1] if "|" in key else key
        if metric.startswith(("lifetime_segmented_ne_", "window_segmented_ne_")):
            if metric.startswith("lifetime_"):
                by_stratum[STRATA[int(metric.rsplit("_", 1)[1])]] = _f(val)
            continue
        out[metric] = _f(val)
    if by_stratum:
        out["ne_by_stratum"] = by_stratum
    return out


def _copy(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().clone().cpu()
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def get_state(module: RecMetricModule) -> dict[str, Any]:
    """Every state of every metric computation on this rank: the lifetime states (what
    ``state_dict`` holds), the window states and torchrec's window buffers (which
    ``state_dict`` leaves out), so a resumed pass reports the same train NE."""
    from torchrec.metrics.rec_metric import RecMetric, RecMetricComputation

    out: dict[str, Any] = {}
    for m in module.modules():
        if isinstance(m, RecMetric):
            m._check_fused_update(force=True)
    for name, comp in module.named_modules():
        if not isinstance(comp, RecMetricComputation):
            continue
        windows = {
            k: ([_copy(t) for t in b._buffers], list(b._used_sizes), b._window_used_size)
            for k, b in (comp._batch_window_buffers or {}).items()
        }
        out[name] = {
            "states": {k: _copy(getattr(comp, k)) for k in comp._defaults},
            "windows": windows,
            "update_count": comp._update_count,
        }
    return out


def set_state(module: RecMetricModule, state: dict[str, Any]) -> None:
    """Inverse of :func:`get_state` on a module built with the same configuration."""
    from torchrec.metrics.rec_metric import RecMetricComputation

    comps = {n: c for n, c in module.named_modules() if isinstance(c, RecMetricComputation)}
    if comps.keys() != state.keys():
        raise ValueError(f"metric state for {sorted(state)} does not fit a module with {sorted(comps)}")
    for name, comp in comps.items():
        st = state[name]
        for k, v in st["states"].items():
            cur = getattr(comp, k)
            if isinstance(cur, torch.Tensor):
                cur.copy_(v.to(cur.device))
            else:
                setattr(comp, k, [t.to(comp.device) if isinstance(t, torch.Tensor) else t for t in v])
        for k, (bufs, sizes, used) in st["windows"].items():
            b = comp._batch_window_buffers[k]
            b._buffers.clear()
            b._buffers.extend(t.to(comp.device) for t in bufs)
            b._used_sizes.clear()
            b._used_sizes.extend(sizes)
            b._window_used_size = used
        comp._update_count = st["update_count"]
