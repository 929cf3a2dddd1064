"""What every section of the job spec shares: the strict pydantic base and the spec's
hard bounds (the service may allow less: see services/admission.py). Imports no torch."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

MAX_LAYER_WIDTH = 16384
MAX_LAYERS = 16
MAX_ID_UNIVERSE = 1_000_000_000  # num_users / num_ads / context_cardinality
MAX_DAY = 100_000
MAX_DAYS = 1000  # train_days / test_days entries
MAX_SEED = 2**32 - 1
MAX_WALL_SECONDS = 30 * 86400


class Strict(BaseModel):
    """Base for every spec section: unknown fields are errors, not ignored."""

    # allow_inf_nan=False: Infinity / NaN are refused in every float field of the spec
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
