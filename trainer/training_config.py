"""The spec's ``training`` section: passes, the sparse and dense optimizers, warm start,
checkpoints and failures (run by :mod:`trainer.loop`). Imports no torch."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from trainer.config_base import MAX_SEED, MAX_WALL_SECONDS
from trainer.config_base import Strict as _Strict
from trainer.errors import FieldValueError


class SparseOptimizerSpec(_Strict):
    """FBGEMM fused optimizer for embedding tables.

    Args:
        type: ``rowwise_adagrad`` (FBGEMM EXACT_ROWWISE_ADAGRAD, the fast path).
        lr (float): learning rate.
        eps (float): AdaGrad epsilon.
        gradient_clipping (bool): FBGEMM per-row gradient clipping.
        max_gradient (float): clip value when ``gradient_clipping`` is on.
    """

    type: Literal["rowwise_adagrad"] = "rowwise_adagrad"
    lr: float = Field(0.04, gt=0.0, le=100.0)
    eps: float = Field(1e-8, gt=0.0, le=1.0)
    gradient_clipping: bool = False
    max_gradient: float = Field(1.0, gt=0.0, le=1e6)


class DenseOptimizerType(str, Enum):
    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAGRAD = "adagrad"
    RMSPROP = "rmsprop"
    ADAM = "adam"


class DenseOptimizerSpec(_Strict):
    """Torch optimizer for the dense (MLP) parameters.

    Args:
        type: sgd / momentum / adagrad / rmsprop / adam.
        lr (float): learning rate.
        momentum (float): for ``momentum`` (and rmsprop).
        eps (float): for adagrad / rmsprop / adam.
        betas (tuple[float, float]): for adam.
    """

    type: DenseOptimizerType = DenseOptimizerType.ADAM
    lr: float = Field(1e-3, gt=0.0, le=100.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    eps: float = Field(1e-8, gt=0.0, le=1.0)
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (
        0.9,
        0.999,
    )


class InitFrom(_Strict):
    """``training.init_from``: start from another run's model instead of fresh weights.

    Args:
        job (str | None): a job id of the same owner; the service resolves it to its
            checkpoint at submit (only your own, finished jobs) and fills ``checkpoint``.
        checkpoint (str | None): a run directory, a job's storage location or one
            checkpoint directory (path, ``file://`` or ``s3://``).
        pass_ (int | None, ``pass`` in YAML): the 0-based pass of that run whose
            end-of-pass checkpoint to load; default the run's selected pass (lowest
            validation NE), else its last.
        reset_optimizer (bool): load the weights only; the row-wise AdaGrad
            accumulators and the dense optimizer start fresh.
    """

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        allow_inf_nan=False,
        populate_by_name=True,
        serialize_by_alias=True,
    )

    job: str | None = Field(None, pattern=r"^[0-9a-f]{16}$")
    checkpoint: str | None = Field(None, min_length=1, max_length=4096)
    pass_: int | None = Field(None, alias="pass", ge=0, le=1000)
    reset_optimizer: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> "InitFrom":
        if self.job is None and self.checkpoint is None:
            raise FieldValueError(
                ("training", "init_from"),
                "name the model to start from: training.init_from.job (a job id) "
                "or training.init_from.checkpoint (a run directory or checkpoint URI)",
            )
        return self


class TrainingSpec(_Strict):
    """How to train.

    Args:
        num_passes (int): passes over the training days.
        sparse_optimizer / dense_optimizer: see their sections.
        reset_lr_each_pass (bool): reset the AdaGrad accumulators (and dense optimizer
            state) at the start of every pass.
        dense_grad_clip_norm (float | None): clip dense gradients by global norm.
        seed (int): model init and shuffling seed.
        checkpoint_every_steps (int | None): also checkpoint every N steps (a
            checkpoint is always written at the end of every pass).
        max_failures (int): worker-group restarts Ray Train may do (resuming from
            the last checkpoint) before the run fails.
        max_wall_seconds (int | None): wall-clock limit of the job; past it the
            service cancels the job with the reason (the service's
            ``RECTRAIN_MAX_WALL_SECONDS`` bounds it and applies when unset).
        on_divergence: ``fail`` (default): a non-finite training loss or NE stops
            the job as failed ("diverged at step N (loss = nan)"); ``continue``
            keeps training and only reports it.
        init_from (InitFrom | None): warm start from another run's model (see
            :class:`InitFrom`); default: fresh weights.
        compile (bool): ``torch.compile`` the dense part (dense arch, interaction,
            over arch; never the sharded embeddings).
        pipeline: ``auto`` | ``sparse_dist`` | ``none``: overlap the next batches' copy
            and input distribution with the step (trainer/pipeline.py).
    """

    num_passes: int = Field(1, ge=1, le=1000)
    sparse_optimizer: SparseOptimizerSpec = Field(default_factory=SparseOptimizerSpec)
    dense_optimizer: DenseOptimizerSpec = Field(default_factory=DenseOptimizerSpec)
    reset_lr_each_pass: bool = False
    dense_grad_clip_norm: float | None = Field(None, gt=0.0, le=1e6)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    checkpoint_every_steps: int | None = Field(None, ge=1, le=10**9)
    max_failures: int = Field(0, ge=0, le=100)
    max_wall_seconds: int | None = Field(None, ge=1, le=MAX_WALL_SECONDS)
    on_divergence: Literal["fail", "continue"] = "fail"
    init_from: InitFrom | None = None
    compile: bool = Field(
        False,
        description=(
            "torch.compile (inductor, static shapes) the dense part: dense arch, interaction and "
            "over arch; the sharded embedding tables stay eager. Each worker compiles once for "
            "training and once for evaluation on its first batches (about 30 s on a cold inductor "
            "cache, 2-7 s on a warm one, on 2 CPU cores); same losses as eager to float32 "
            "rounding, but dropout draws its masks from inductor's generator. On the CPU at "
            "26 x 100k x 64, batch 2048, dot interaction: about 1.07x the eager step "
            "(BENCHMARKS.md, 'torch.compile'); measured on the CPU only."
        ),
    )
    pipeline: Literal["auto", "sparse_dist", "none"] = Field(
        "auto",
        description=(
            "How training steps run. 'sparse_dist': TorchRec's TrainPipelineSparseDist, which "
            "overlaps the next batch's device copy and input all-to-all with the current step "
            "(same results as 'none': the lookups still read the embeddings after the previous "
            "step's update); 'none': one step at a time; 'auto' (default): sparse_dist on CUDA, "
            "none on the CPU, where it did not pay (BENCHMARKS.md, 'Sparse-dist pipeline')."
        ),
    )
    pass_checkpoints: Literal["every", "selected"] | None = Field(
        None,
        description=(
            "Which pass ends are checkpointed: 'every' pass, or only a pass that can be the "
            "validation-selected one ('selected'; without validation data, the last pass). "
            "Unset: 'every' for a job run on its own, 'selected' for a study run on a warm "
            "worker group (docs/studies.md, 'Warm execution')."
        ),
    )
