"""The spec's ``model`` section: capacity and dense architecture (built by
:mod:`trainer.model.dlrm`). Imports no torch."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from pydantic import Field, model_validator

from trainer.config_base import MAX_LAYER_WIDTH, MAX_LAYERS
from trainer.config_base import Strict as _Strict
from trainer.errors import FieldValueError


class Interaction(str, Enum):
    CONCAT = "concat"  # concatenate dense output and pooled embeddings
    DOT = "dot"  # DLRM pairwise dot products (needs dense_arch[-1] == embedding_dim)


class ModelSpec(_Strict):
    """Model capacity and dense-architecture options.

    Args:
        embedding_dim (int): width of every embedding row.
        hash_size (int): rows per embedding table; ids are hashed into it.
        num_replicas (int): independent hashed tables per sparse feature (different
            hash seeds); their pooled outputs are summed.
        dense_arch (list[int]): hidden sizes of the MLP on dense features.
        over_arch (list[int]): hidden sizes of the MLP after the interaction; a final
            1-unit logit layer is always added.
        interaction: ``concat`` or ``dot``.
        batch_norm (bool): batch norm after each hidden layer.
        xavier_init (bool): Xavier-uniform initialisation of dense weights.
    """

    embedding_dim: int = Field(16, ge=4, le=1024, multiple_of=4)
    hash_size: int = Field(100_000, ge=2, le=2**31 - 1)
    num_replicas: int = Field(1, ge=1, le=16)
    dense_arch: list[Annotated[int, Field(ge=1, le=MAX_LAYER_WIDTH)]] = Field(
        default_factory=lambda: [64, 16], min_length=1, max_length=MAX_LAYERS
    )
    over_arch: list[Annotated[int, Field(ge=1, le=MAX_LAYER_WIDTH)]] = Field(
        default_factory=lambda: [64, 32], max_length=MAX_LAYERS
    )
    interaction: Interaction = Interaction.DOT
    batch_norm: bool = False
    xavier_init: bool = True

    @model_validator(mode="after")
    def _dot_needs_matching_width(self) -> "ModelSpec":
        if self.interaction == Interaction.DOT and self.dense_arch[-1] != self.embedding_dim:
            raise FieldValueError(
                ("model", "dense_arch"),
                f"the last layer ({self.dense_arch[-1]}) must equal "
                f"model.embedding_dim ({self.embedding_dim}) when interaction is 'dot'; "
                "change one of them or use interaction: concat",
            )
        return self
