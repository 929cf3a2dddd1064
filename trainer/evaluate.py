"""Evaluation after each pass, and the pass's result row.

:func:`evaluate` scores the model on the validation or test rows of all ranks (NE,
calibration, exact AUC, NE per stratum and, on synthetic data, the oracle NE);
:func:`pass_row` makes the pass's :class:`trainer.results.PassResult` row from its
train-metric summary and the two evaluations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from trainer.data.batch import STRATA
from trainer.data.prefetch import prefetch
from trainer.metrics import ne
from trainer.metrics.auc import ExactAUC
from trainer.model.dlrm import batch_norm_statistics
from trainer.results import PassResult

if TYPE_CHECKING:
    from trainer.loop import Trainer


@torch.no_grad()
def evaluate(t: Trainer, split: str, oracle_cache: dict[str, float | None]) -> dict[str, Any]:
    """NE, calibration, exact AUC, NE per stratum (and, on synthetic data, the oracle
    NE) of ``t``'s model on the ``split`` ("test" or "validation") rows of all ranks.
    Collective. ``oracle_cache``: the oracle NE per split, computed once (it does not
    depend on the model)."""
    # each rank's batch-norm running statistics saw only its own batches: score
    # every slice with the same (averaged) statistics
    t.collectives.average_(batch_norm_statistics(t.dmp))
    steps = t.data.val_steps if split == "validation" else t.data.eval_steps
    if steps == 0:
        return {}
    spec = t.spec
    world = t.session.world_size

    def module(with_strata: bool):
        return ne.make_metric_module(
            window_size=steps * spec.data.batch_size * world,
            batch_size=spec.data.batch_size,
            world_size=world,
            rank=t.session.rank,
            device=t.device,
            with_strata=with_strata,
        )

    metrics = module(with_strata=True)
    auc = ExactAUC(t.collectives)
    oracle = module(with_strata=False) if split not in oracle_cache else None
    has_probs = False
    counts = torch.zeros(3, dtype=torch.float64)
    pin = t.device.type == "cuda"  # page-locked host batches: async H2D copies
    t.dmp.eval()
    for batch in prefetch(t.data.eval_batches(split), spec.data.prefetch_batches, pin=pin):
        batch = batch.to(t.device, non_blocking=True)
        logits = t.dmp(batch.dense, batch.sparse)
        ne.update(metrics, logits, batch)
        auc.update(torch.sigmoid(logits), batch.labels, batch.weights)
        if oracle is not None and batch.probs is not None:
            ne.update_probs(oracle, batch.probs, batch)
            has_probs = True
        counts += torch.bincount(batch.strata.cpu(), weights=batch.weights.cpu().double(), minlength=3)
    t.dmp.train()
    out = ne.summarize(metrics.compute())
    out["auc"] = auc.compute()
    if oracle is not None:  # every rank reads the same days, so has_probs agrees across ranks
        oracle_cache[split] = ne.summarize(oracle.compute()).get("lifetime_ne") if has_probs else None
    out["oracle_ne"] = oracle_cache[split]
    counts = t.collectives.all_reduce(counts).cpu()
    out["examples_by_stratum"] = {s: int(c) for s, c in zip(STRATA, counts.tolist(), strict=True)}
    # a stratum with no examples has no NE
    out["ne_by_stratum"] = {
        s: (v if out["examples_by_stratum"][s] > 0 else None) for s, v in out.get("ne_by_stratum", {}).items()
    }
    return out


def pass_row(
    p: int,
    train: dict[str, Any],
    val: dict[str, Any],
    test: dict[str, Any],
    *,
    references: dict[str, Any] | None,
    examples: int,
    ran: float,
    seconds: float,
    cpu_seconds: float,
    global_step: int,
) -> dict[str, Any]:
    """Pass ``p``'s result as a plain row (checkpointed and reported to Ray Train as it
    is): ``train``, ``val``, ``test``: the train-metric summary and the evaluations;
    ``examples``: the pass's examples over all workers; ``ran``: the examples this
    process trained (a resumed pass ran fewer) in ``seconds``; ``cpu_seconds``: the
    training CPU time summed over the workers."""
    return PassResult(
        pass_=p,
        train_ne=train.get("lifetime_ne"),
        train_calibration=train.get("lifetime_calibration"),
        val_ne=val.get("lifetime_ne"),
        val_calibration=val.get("lifetime_calibration"),
        val_auc=val.get("auc"),
        val_ne_by_stratum=val.get("ne_by_stratum", {}),
        val_examples_by_stratum=val.get("examples_by_stratum", {}),
        test_ne=test.get("lifetime_ne"),
        test_calibration=test.get("lifetime_calibration"),
        test_auc=test.get("auc"),
        test_ne_by_stratum=test.get("ne_by_stratum", {}),
        test_examples_by_stratum=test.get("examples_by_stratum", {}),
        oracle_val_ne=val.get("oracle_ne"),
        oracle_test_ne=test.get("oracle_ne"),
        references=references,
        train_examples=examples,
        train_seconds=seconds,
        # throughput over the steps this process ran (a resumed pass ran fewer)
        examples_per_s=ran / seconds if seconds > 0 else None,
        # training CPU time (all threads) summed over the workers, over the same
        # span as examples_per_s: comparable across worker counts on a shared box
        cpu_seconds=cpu_seconds,
        cpu_seconds_per_example=cpu_seconds / ran if ran > 0 else None,
        global_step=global_step,
    ).model_dump()
