"""The training steps of one pass, plain or through TorchRec's sparse-dist pipeline.

``training.pipeline`` (resolved by :func:`resolve`):

- ``none``: one step at a time (:meth:`trainer.loop.Trainer.train_step`): copy the
  batch, rewrite its KJT (``sparse_dropout``, ``sse_se``), forward (input all-to-all,
  lookup, output all-to-all, dense part), loss, backward with FBGEMM's fused update,
  dense step, post-step row maps.
- ``sparse_dist``: TorchRec's :class:`TrainPipelineSparseDist`. While batch *i* runs
  forward / backward / optimizer, batch *i+1*'s input distribution (the splits and
  then the ids all-to-all of the sharded EBC) is already in flight and batch *i+2* is
  copied to the device (on CUDA: on their own streams; on the CPU the same order with
  no streams). The embeddings batch *i+1* reads are still those after step *i*'s
  update (the lookup stays in step *i+1*'s forward): the same arithmetic as ``none``.

Where the regularizer hooks run under ``sparse_dist`` (docs/regularizers.md, "Order
within a step"): the KJT rewrites (``sparse_dropout`` then ``sse_se``) move from the
step to the batch's device copy (:meth:`SparseDistPipeline.copy_batch_to_gpu`), so the
input all-to-all distributes the rewritten ids; they draw from the same per-step
generators on the same device as in ``none`` (seeded by the global step the batch
will train at), hence the same ids. Everything else stays in the step: the TBE
forward hooks (rows read, ``freq_decay``'s decay, the ``sparse_l2`` fallback's
gradient hook) fire in the lookup, which runs in the step's forward; ``max_entropy``
reads the pooled embeddings of that forward; the dense step and the post-step row maps
(``sparse_l1``, ``max_norm``, ``const_norm``) run as the pipeline's optimizer step
(:class:`StepOptimizer`), after backward; ``shrink`` after the step as before. The
pass-level hooks (``embedding_reset``, ``freeze``, ``lr_schedule``) run between passes,
when the pipeline has been drained and detached (every in-flight batch trained, the
EBC's own forward restored for evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.distributed.train_pipeline.runtime_forwards import PipelinedForward
from torchrec.distributed.types import ShardedModule

from trainer.data.batch import Batch
from trainer.spec import JobSpec

if TYPE_CHECKING:
    from trainer.loop import Trainer

PIPELINES = ("auto", "sparse_dist", "none")


def resolve(spec: JobSpec, device: torch.device) -> str:
    """``training.pipeline`` for ``device``: ``auto`` is ``sparse_dist`` on CUDA and
    ``none`` on the CPU, where it was measured not to pay (BENCHMARKS.md, "Sparse-dist
    pipeline")."""
    choice = spec.training.pipeline
    if choice == "auto":
        return "sparse_dist" if device.type == "cuda" else "none"
    return choice


class _EbcInput(torch.nn.Module):
    """What :func:`torchrec...utils._rewrite_model` traces instead of the model: the
    sharded EBC fed straight from ``batch.sparse``. The real forward (DMP -> DDP ->
    :class:`trainer.model.dlrm.DLRM`) has control flow over the pooled KeyedTensor's
    keys that FX cannot trace; the rewrite only needs to learn which batch attribute
    feeds which sharded module, and swaps that module's ``forward`` in place, so the
    real forward then gets the pipelined lookup."""

    def __init__(self, ebc: torch.nn.Module) -> None:
        super().__init__()
        self.ebc = ebc

    def forward(self, batch: Batch) -> Any:
        return self.ebc(batch.sparse)


class StepOptimizer:
    """The pipeline's ``optimizer``: ``zero_grad`` before the forward, ``step`` after
    backward: :meth:`Trainer.after_backward`, the rest of a plain step."""

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.t.dense_opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.t.after_backward()


class SparseDistPipeline(TrainPipelineSparseDist):
    """:class:`TrainPipelineSparseDist` over rectrain's DMP and :class:`Batch`.

    ``transform(batch, step)`` (the KJT rewrites) runs on each batch right after its
    device copy, before its input distribution; ``first_step`` is the global step of
    the first batch the iterator yields."""

    def __init__(
        self,
        trainer: Trainer,
        transform: Callable[..., Batch],
        first_step: int,
    ) -> None:
        self._trainer = trainer
        self._transform = transform
        self._next_step = first_step
        super().__init__(
            trainer.dmp,
            StepOptimizer(trainer),  # type: ignore[arg-type]  # duck-typed: zero_grad / step
            trainer.device,
            execute_all_batches=True,
            custom_model_fwd=self._forward,
        )

    def _forward(self, batch: Batch | None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, Batch]]:
        """Forward and loss of one batch: (loss, (loss, logits, batch))."""
        assert batch is not None
        loss, logits = self._trainer.forward_loss(batch)
        return loss, (loss, logits, batch)

    def _backward(self, losses: torch.Tensor) -> None:
        losses.backward()  # a scalar: the same call as the plain step

    def copy_batch_to_gpu(self, dataloader_iter: Iterator[Batch]):  # type: ignore[override]
        batch, context = super().copy_batch_to_gpu(dataloader_iter)
        if batch is not None:
            # the KJT rewrites, on the copy's stream, before the input all-to-all reads the ids
            with self._stream_context(self._memcpy_stream):  # type: ignore[arg-type]
                batch = self._transform(batch, step=self._next_step)
            self._next_step += 1
        return batch, context

    def _pipeline_model(
        self,
        batch: Batch | None,
        context: Any,
        pipelined_forward: type[PipelinedForward] = PipelinedForward,
    ) -> None:
        """Rewrite the sharded EBC's forward, tracing :class:`_EbcInput` instead of the
        model (see there); the pipeline keeps the DMP as its model."""
        model: torch.nn.Module = self._model  # type: ignore[has-type]  # set in TorchRec's __init__
        ebc = getattr(getattr(model, "module", model), "ebc", None)
        assert isinstance(ebc, ShardedModule), "the model's EBC is not sharded"
        stand_in: torch.nn.Module = _EbcInput(ebc)
        self._model = stand_in
        try:
            super()._pipeline_model(batch, context, pipelined_forward)  # type: ignore[arg-type]
        finally:
            self._model = model
        if not self._pipelined_modules:
            raise RuntimeError("training.pipeline: TorchRec did not pipeline the sharded EBC")


def plain_steps(trainer: Trainer, batches: Iterator[Batch]) -> Iterator[tuple[Batch, torch.Tensor]]:
    """``training.pipeline: none``: (batch, logits) of each step, one step at a time."""
    try:
        for batch in batches:
            batch = batch.to(trainer.device, non_blocking=True)
            yield batch, trainer.train_step(batch)
    finally:
        _close(batches)


def pipelined_steps(trainer: Trainer, batches: Iterator[Batch]) -> Iterator[tuple[Batch, torch.Tensor]]:
    """``training.pipeline: sparse_dist``: (batch, logits) of each step, the next
    batches' copy and input distribution overlapped with it. Drained at the end (every
    batch of ``batches`` is trained) and always detached, so evaluation, checkpoints
    and the next pass see the model's own forward."""
    pipe = SparseDistPipeline(trainer, trainer.regs.transform, trainer.global_step)
    try:
        while True:
            try:
                loss, logits, batch = pipe.progress(batches)
            except StopIteration:
                return
            trainer.divergence.note(loss, trainer.global_step)
            yield batch, logits
    finally:
        # stopped early (an exception in the loop: divergence, a failed checkpoint): the
        # next batch's ids all-to-all, which every rank issued in the last step, is
        # still in flight; settle it so no collective outlives the pass
        for context in pipe.contexts:
            for request in context.input_dist_tensors_requests.values():
                request.wait()
        pipe.detach()
        pipe.reset()
        _close(batches)


def _close(batches: Iterator[Batch]) -> None:
    """Close the pass's batch iterator now, also when the pass stopped early (its
    prefetch thread stops building batches; left to the garbage collector, a traceback
    that keeps the pass's frame alive would keep the thread running)."""
    close = getattr(batches, "close", None)
    if close is not None:
        close()


def steps(trainer: Trainer, batches: Iterator[Batch]) -> Iterator[tuple[Batch, torch.Tensor]]:
    """The pass's steps under the run's ``training.pipeline``."""
    if resolve(trainer.spec, trainer.device) == "sparse_dist":
        return pipelined_steps(trainer, batches)
    return plain_steps(trainer, batches)
