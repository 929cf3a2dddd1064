"""The dense layers' shapes of a job's DLRM, from its spec, without torch.

:class:`trainer.model.dlrm.DLRM` builds its dense arch, interaction and over arch
from :func:`dense_shapes`, and the memory model (:mod:`trainer.memory`) counts their
parameters from the same shapes (:func:`dense_param_count`), so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.model.config import Interaction, ModelSpec


@dataclass(frozen=True)
class DenseShapes:
    """Layer widths of the dense part of a DLRM.

    Attributes:
        num_dense: dense input features (0: no dense arch).
        dense_arch: hidden sizes of the dense MLP (empty when ``num_dense`` is 0).
        interaction_out: width of the interaction's output, the over arch's input.
        over_arch: sizes of the over MLP, its final 1-unit logit layer included.
        batch_norm: batch norm after each hidden layer (not after the logit layer).
    """

    num_dense: int
    dense_arch: tuple[int, ...]
    interaction_out: int
    over_arch: tuple[int, ...]
    batch_norm: bool


def interaction_out_size(interaction: Interaction, dense_out: int, num_sparse: int, dim: int) -> int:
    """Output width of the interaction of ``dense_out`` dense units (0: none) with
    ``num_sparse`` pooled embeddings of width ``dim``: ``dot`` gives the dense output and
    the strict upper triangle of the vectors' Gram matrix, ``concat`` all of them side by side."""
    if interaction == Interaction.DOT:
        n_vec = num_sparse + (1 if dense_out else 0)
        return dense_out + n_vec * (n_vec - 1) // 2
    return dense_out + num_sparse * dim


def dense_shapes(model: ModelSpec, num_dense: int, num_sparse: int) -> DenseShapes:
    """The dense part of the DLRM of ``model`` over ``num_dense`` dense and ``num_sparse``
    sparse features."""
    dense_arch = tuple(model.dense_arch) if num_dense > 0 else ()
    dense_out = dense_arch[-1] if dense_arch else 0
    return DenseShapes(
        num_dense=num_dense,
        dense_arch=dense_arch,
        interaction_out=interaction_out_size(model.interaction, dense_out, num_sparse, model.embedding_dim),
        over_arch=(*model.over_arch, 1),
        batch_norm=model.batch_norm,
    )


def mlp_param_count(
    in_features: int, sizes: tuple[int, ...], *, batch_norm: bool, final_activation: bool
) -> int:
    """Parameters of :class:`trainer.model.dlrm.MLP`: each Linear's weight and bias, and
    each batch norm's weight and bias (after every layer but a last one without activation)."""
    count = 0
    for i, out in enumerate(sizes):
        count += in_features * out + out
        if batch_norm and (i < len(sizes) - 1 or final_activation):
            count += 2 * out
        in_features = out
    return count


def dense_param_count(shapes: DenseShapes) -> int:
    """Parameters of the dense arch and the over arch (the interaction has none)."""
    count = mlp_param_count(
        shapes.num_dense, shapes.dense_arch, batch_norm=shapes.batch_norm, final_activation=True
    )
    return count + mlp_param_count(
        shapes.interaction_out, shapes.over_arch, batch_norm=shapes.batch_norm, final_activation=False
    )
