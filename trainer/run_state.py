"""A run's state across processes: checkpoints, resume and warm start.

- :func:`save`: a DCP checkpoint (:mod:`trainer.checkpoint`) of everything a resume
  needs to continue exactly, handed to the session with its metrics;
- :func:`end_of_pass`: the pass that just ended is checkpointed or only reported, by
  ``pass_checkpoints`` (:func:`keeps_pass_checkpoint`);
- :func:`resume`: a run starts from its session's checkpoint (Ray Train's, after a
  restart) or, without one, fresh or from ``training.init_from`` (:func:`warm_start`).

Each takes the :class:`trainer.loop.Trainer` whose state it saves or restores, and
is called by all its ranks together.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

import torch

from trainer.checkpoint import (
    load_checkpoint,
    load_weights,
    reseed,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from trainer.lifecycle import MID_PASS_SCORE, keep_score, model_signature
from trainer.metrics import ne
from trainer.metrics.events import EventType, Phase
from trainer.spec import JobSpec

if TYPE_CHECKING:
    from trainer.loop import Trainer

PASS_CHECKPOINTS = ("every", "selected")


def keeps_pass_checkpoint(policy: str, passes: list[dict[str, Any]], spec: JobSpec) -> bool:
    """Whether the pass that just ended (``passes[-1]``) is checkpointed.

    "every": always. "selected": only a pass that may turn out to be the run's selected
    pass (trainer/report.py): with validation data, a pass whose validation NE is lower
    than every earlier pass's (the earliest wins ties, so an equal later pass cannot
    be selected); without, the last pass. Read on rank 0, which holds the metrics'
    values (:func:`pass_checkpointed` tells the other ranks)."""
    if policy == "every":
        return True
    p = passes[-1]
    if not spec.data.has_validation:
        return p["pass"] == spec.training.num_passes - 1
    v = p.get("val_ne")
    if v is None:
        return False
    earlier = [q["val_ne"] for q in passes[:-1] if q.get("val_ne") is not None]
    return all(v < e for e in earlier)


def pass_checkpointed(t: Trainer) -> bool:
    """Collective: whether the pass that just ended is checkpointed. Rank 0 decides
    (the metrics' values, validation NE among them, are computed on rank 0 only) and
    tells the others, so that all ranks enter the checkpoint's collectives or none."""
    keep = keeps_pass_checkpoint(t.pass_checkpoints, t.passes, t.spec)
    if t.pass_checkpoints == "every" or t.session.world_size == 1:
        return keep
    flag = t.collectives.broadcast(torch.tensor([1.0 if keep else 0.0]), src=0)
    return bool(flag.cpu()[0] > 0)


def end_of_pass(t: Trainer, p: int) -> None:
    """Collective, after pass ``p``'s row was added to ``t.passes``: its checkpoint, or
    (not checkpointed) its results still reach the session (Ray Train: the run's last
    metrics)."""
    if pass_checkpointed(t):
        save(t, p + 1, 0, {"pass": p})
        return
    t.session.report(
        {"pass": p, "global_step": t.global_step, "passes": t.passes, "timings": t.timings}, None
    )


def save(
    t: Trainer, pass_idx: int, step_in_pass: int, metrics: dict[str, Any], train_metrics: Any = None
) -> None:
    """Collective: a DCP checkpoint of everything a resume needs to continue exactly
    (mid-pass: with the pass's train-metric states), handed to the session."""
    rank_state = {
        "progress": {
            "pass": pass_idx,
            "step_in_pass": step_in_pass,
            "global_step": t.global_step,
            "passes": t.passes,
        },
        "rng": rng_state(t.device),
        "train_metrics": ne.get_state(train_metrics) if train_metrics is not None else None,
    }
    progress = {"pass": pass_idx, "step_in_pass": step_in_pass, "global_step": t.global_step}
    meta = {"progress": progress, "model": model_signature(t.spec)}
    # which checkpoints Ray Train keeps (trainer/lifecycle.py): the latest, and the pass
    # ends with the best score (lowest validation NE; without validation, the last)
    score = MID_PASS_SCORE
    if step_in_pass == 0 and pass_idx > 0 and t.passes:
        score = keep_score(t.passes[-1].get("val_ne"), pass_idx - 1, t.spec.data.has_validation)
    with tempfile.TemporaryDirectory(prefix="rectrain-ckpt-") as d:
        save_checkpoint(
            d,
            rank=t.session.rank,
            world_size=t.session.world_size,
            dmp=t.dmp,
            dense_opt=t.dense_opt,
            rank_state=rank_state,
            meta=meta,
            regs=t.regs.checkpoint_state(),
        )
        t.session.report(
            {
                **metrics,
                "global_step": t.global_step,
                "passes": t.passes,
                "keep_score": score,
                "timings": t.timings,
            },
            d,
        )


def plan(t: Trainer) -> dict[str, int]:
    """The run's size, for the "started" and "resumed" events."""
    steps = t.data.steps_per_pass
    return {
        "steps_per_pass": steps,
        "num_passes": t.spec.training.num_passes,
        "total_steps": steps * t.spec.training.num_passes,
        "num_workers": t.session.world_size,
    }


def resume(t: Trainer) -> tuple[int, int]:
    """Collective: restore ``t`` from its session's checkpoint, if it has one (its
    progress, passes, optimizers, regularizer state, and at the same world size its
    random state and mid-pass train metrics); else warm-start it from
    ``training.init_from``, if set. Returns where to go on: (pass, step in pass)."""
    ckpt = t.session.checkpoint_dir()
    if ckpt is None:
        warm_start(t)
        t.emit(
            EventType.LIFECYCLE,
            -1,
            phase=Phase.STARTED.value,
            message=f"{t.session.world_size} worker(s), {t.data.steps_per_pass} steps/pass",
            **plan(t),
        )
        return 0, 0
    regs = t.regs.checkpoint_state()
    st, own = load_checkpoint(
        ckpt,
        rank=t.session.rank,
        world_size=t.session.world_size,
        dmp=t.dmp,
        dense_opt=t.dense_opt,
        regs=regs,
    )
    t.regs.state_loaded(regs)
    prog = st["progress"]
    t.global_step = prog["global_step"]
    t.passes = list(prog["passes"])
    if own:  # same world size: continue this rank's random stream and train metrics exactly
        set_rng_state(st["rng"], t.device)
        t.resumed_train_metrics = st.get("train_metrics")
    else:
        reseed(t.spec.training.seed, t.global_step, t.session.rank, t.device)
    t.emit(
        EventType.LIFECYCLE,
        prog["pass"],
        phase=Phase.RESUMED.value,
        message=f"resumed at pass {prog['pass'] + 1} step {prog['step_in_pass']}",
        **plan(t),
    )
    return prog["pass"], prog["step_in_pass"]


def warm_start(t: Trainer) -> None:
    """``training.init_from``: a new job starts from another run's weights (and, unless
    ``reset_optimizer``, its optimizers' state), saved at any number of workers."""
    init = t.spec.training.init_from
    if init is None:
        return
    from trainer import storage
    from trainer.lifecycle import prepare_init_from

    if not t.init_from_checked:
        # in-process runs (no driver) resolve and check it here; a driver's workers use
        # what the driver checked (trainer/launch.py), once per run (docs/admission.md)
        given = init.checkpoint or ""
        init = prepare_init_from(t.spec, pinned=os.path.isabs(given)).training.init_from
    assert init is not None and init.checkpoint is not None
    location, at = init.checkpoint, init.pass_
    with tempfile.TemporaryDirectory(prefix="rectrain-init-") as tmp:
        local = storage.download_dir(location, tmp)
        regs = {} if init.reset_optimizer else t.regs.checkpoint_state()
        load_weights(
            local,
            world_size=t.session.world_size,
            dmp=t.dmp,
            dense_opt=None if init.reset_optimizer else t.dense_opt,
            regs=regs,
            field="training.init_from.checkpoint",
        )
        t.regs.state_loaded(regs)  # with reset_optimizer: freq_decay starts afresh
    what = "weights" if init.reset_optimizer else "weights and optimizer state"
    t.emit(
        EventType.LIFECYCLE,
        -1,
        phase="warm_start",
        message=f"{what} from {location}" + (f" (pass {at}, 0-based)" if at is not None else ""),
    )
