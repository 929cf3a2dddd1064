"""The spec's ``regularizers`` section: one pydantic model per regularizer type (a
discriminated union on ``type``) and their checks against the rest of the spec
(applied by :mod:`trainer.regularizers.regset`; formulas in docs/regularizers.md).
Imports no torch."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from trainer.config_base import Strict as _Strict
from trainer.data.config import DataSource, DataSpec
from trainer.errors import FieldValueError

_Prob = Annotated[float, Field(ge=0.0, lt=1.0)]
_Factor = Annotated[float, Field(ge=0.0, le=100.0)]


class SparseL2(_Strict):
    """``sparse_l2``: adds lambda * w to the gradient of each embedding row activated
    in the batch (FBGEMM ``weight_decay`` with mode L2), or, with ``decouple``,
    shrinks those rows by lr * lambda * w after the step (mode DECOUPLE). ``mode``
    selects any of FBGEMM's WeightDecayMode: ``l2``, ``decouple``, ``counter`` (decay
    scaled by counter_halflife / the row's decayed read count), ``cowclip`` (gradient
    clipped to the row's count x max(weight_norm_coefficient x |w|, lower_bound)),
    ``decouple_global`` (every row decays every step, lazily; CUDA only). Formulas and
    where each runs: docs/regularizers.md."""

    type: Literal["sparse_l2"]
    weight: float = Field(gt=0.0, le=10.0, description="lambda")
    decouple: bool = False
    # FBGEMM's WeightDecayMode (issue 25; docs/regularizers.md, "sparse_l2 modes"):
    # unset = ``l2``, or ``decouple`` with ``decouple: true``
    mode: Literal["l2", "decouple", "decouple_global", "counter", "cowclip"] | None = None
    counter_halflife: int | None = Field(
        None,
        ge=-1,
        le=10**9,
        description="counter (required, >= 1) / cowclip (default -1): steps to halve a row's count; "
        "0: the count is 1; -1: the raw count",
    )
    # the modes' own parameters are unset (None) unless given, so a spec that does not use
    # a mode does not carry its defaults around (the dashboard lists a regularizer's set
    # parameters); the effective values are the properties below
    counter_decay: Literal["none", "l2", "decouple"] | None = Field(
        None,
        description="counter/cowclip: how lambda is applied (FBGEMM CounterWeightDecayMode; default decouple)",
    )
    weight_norm_coefficient: float | None = Field(
        None, ge=0.0, le=1e6, description="cowclip: clip ratio to the row norm (default 0)"
    )
    lower_bound: float | None = Field(
        None, ge=0.0, le=1e6, description="cowclip: smallest clip threshold (default 0)"
    )
    gwd_lower_bound: float | None = Field(
        None, ge=0.0, le=1.0, description="decouple_global: floor of the lazy decay (default 0)"
    )

    @model_validator(mode="after")
    def _mode(self) -> "SparseL2":
        if self.mode is not None and self.decouple and self.mode != "decouple":
            raise ValueError(f"sparse_l2: decouple: true contradicts mode: {self.mode}; drop decouple")
        if self.mode == "counter" and (self.counter_halflife is None or self.counter_halflife < 1):
            raise ValueError(
                "sparse_l2: mode counter scales the decay by counter_halflife / (the row's decayed count): "
                "set counter_halflife >= 1 (steps)"
            )
        if self.mode == "cowclip" and not self.weight_norm_coefficient and not self.lower_bound:
            raise ValueError(
                "sparse_l2: mode cowclip clips every gradient to 0 without weight_norm_coefficient "
                "or lower_bound; set one of them > 0"
            )
        return self

    @property
    def effective_mode(self) -> str:
        return self.mode or ("decouple" if self.decouple else "l2")

    @property
    def effective_counter_decay(self) -> str:
        return self.counter_decay or "decouple"


class SparseL1(_Strict):
    """``sparse_l1``: after each step, soft-threshold every element of each activated
    row towards zero by lr * lambda without crossing it:
    w <- sign(w) * max(|w| - lr * lambda, 0) (lr: the current sparse learning rate)."""

    type: Literal["sparse_l1"]
    weight: float = Field(gt=0.0, le=10.0, description="lambda")


class MaxNorm(_Strict):
    """``max_norm``: after each step, every activated row with L2 norm > c is
    rescaled to norm c."""

    type: Literal["max_norm"]
    c: float = Field(gt=0.0, le=1e6, description="maximum row norm")


class ConstNorm(_Strict):
    """``const_norm``: after each step, every activated (non-zero) row is rescaled
    to L2 norm exactly c."""

    type: Literal["const_norm"]
    c: float = Field(gt=0.0, le=1e6, description="row norm")


class SparseDropout(_Strict):
    """``sparse_dropout``: training only, each sparse id is dropped with probability
    p (``per_feature`` overrides p for the named sparse features). All replicas of a
    feature drop the same ids. ``rescale`` (default true): kept ids count 1/(1-p) in
    their (sum-pooled) bag, so training bags match test bags in expectation (inverted
    dropout, like ``dropout``); false: kept ids count 1, training bags are smaller."""

    type: Literal["sparse_dropout"]
    p: _Prob
    per_feature: dict[str, _Prob] = Field(default_factory=dict)
    rescale: bool = True


class Dropout(_Strict):
    """``dropout``: training only, dropout with probability p on the hidden units of
    the dense and over arch."""

    type: Literal["dropout"]
    p: _Prob


class DenseL2(_Strict):
    """``dense_l2``: weight decay lambda on dense weight matrices (the dense
    optimizer's ``weight_decay``); biases and other 1-D parameters are never decayed."""

    type: Literal["dense_l2"]
    weight: float = Field(gt=0.0, le=10.0, description="lambda")


class SseSe(_Strict):
    """``sse_se``: Stochastic Shared Embeddings, training only: each id is replaced
    with probability p by a uniformly random row of the same table (after hashing);
    ``per_feature`` overrides p for the named sparse features."""

    type: Literal["sse_se"]
    p: _Prob
    per_feature: dict[str, _Prob] = Field(default_factory=dict)


class FreezeWhat(str, Enum):
    EMBEDDINGS = "embeddings"
    DENSE = "dense"
    BOTH = "both"


class Freeze(_Strict):
    """``freeze``: from pass ``from_pass`` on (0-based, as the ``pass`` of the
    results: 1 = from the second pass), stop updating the embeddings, the dense
    part or both (learning rate 0)."""

    type: Literal["freeze"]
    from_pass: int = Field(ge=0, le=1000)
    what: FreezeWhat = FreezeWhat.EMBEDDINGS


class LrSchedule(_Strict):
    """``lr_schedule``: per-pass learning-rate factors for the sparse and dense
    optimizers (``sparse[k]`` multiplies the sparse lr during pass k; passes beyond
    the list keep its last factor; an empty list means 1), and with ``reset`` the
    AdaGrad accumulators (and dense optimizer state) are zeroed at every pass start
    after the first."""

    type: Literal["lr_schedule"]
    sparse: list[_Factor] = Field(default_factory=list)
    dense: list[_Factor] = Field(default_factory=list)
    reset: bool = False


class Shrink(_Strict):
    """``shrink``: embedding shrinkage. At the end of every pass (``at_pass_end``) and
    after every ``every_steps``-th step of a pass, each embedding row that training
    read in the current pass so far (on any worker; count c >= 1), and with
    ``max_count`` K only rows with c < K, is multiplied by 1 - s. Rows not read in
    the pass are never touched. The row-wise AdaGrad accumulator of a shrunk row is
    left as is unless ``reset_state`` (then it is set to 0). Nothing happens while
    the embeddings are frozen (sparse learning rate 0)."""

    type: Literal["shrink"]
    s: float = Field(gt=0.0, le=1.0, description="shrink factor: w <- (1 - s) * w")
    at_pass_end: bool = True
    every_steps: int | None = Field(None, ge=1, le=10**9)
    max_count: int | None = Field(None, ge=1, le=10**12, description="K: only rows read fewer than K times")
    reset_state: bool = False


class MaxEntropy(_Strict):
    """``max_entropy``: adds to the loss, per table t (every replica), lambda_t *
    (log D - H(p_t)) with p_t,d = E_t,d / sum_d' E_t,d' and E_t,d = sum over the
    worker's batch of the squared pooled embedding e_t,b,d^2: rewards spreading the
    embedding energy over all D dimensions. ``per_feature`` overrides lambda (0
    turns it off for a feature). Its gradient reaches the rows through the fused
    optimizer like the loss's."""

    type: Literal["max_entropy"]
    weight: float = Field(gt=0.0, le=100.0, description="lambda")
    per_feature: dict[str, Annotated[float, Field(ge=0.0, le=100.0)]] = Field(default_factory=dict)


class SseGraph(_Strict):
    """``sse_graph``: SSE-Graph, training only: each id of a listed feature is
    replaced with probability p by a neighbour in a graph built once from the
    training days. Synthetic source: ids of the same ground-truth cluster
    (``features`` default: user_id, ad_id, ad_history). Table source: ids of a
    feature that share a value of ``graph_column`` (a declared sparse column) in
    some training row; ``features`` is required. Criteo has no graph (refused)."""

    type: Literal["sse_graph"]
    p: _Prob
    per_feature: dict[str, _Prob] = Field(default_factory=dict)
    features: list[str] | None = Field(None, min_length=1)
    graph_column: str | None = Field(None, min_length=1)

    def graph_features(self, data: DataSpec) -> list[str]:
        """The features whose ids are replaced (the synthetic default: those with clusters)."""
        if self.features is not None:
            return list(self.features)
        names = data.sparse_feature_names()
        return [f for f in SYNTHETIC_GRAPH_FEATURES if f in names]

    def rate(self, feature: str) -> float:
        return self.per_feature.get(feature, self.p)


SYNTHETIC_GRAPH_FEATURES = ("user_id", "ad_id", "ad_history")


class FreqDecay(_Strict):
    """``freq_decay``: frequency-aware decoupled decay (AdagradAR, Li & Lyu, ICLR 2026,
    arXiv 2511.06374). When a training step reads an embedding row last read at clock
    t0, its update becomes w <- (1 - lambda) * w - lr * g / (sqrt(G) + eps) with
    lambda = min(1, alpha * (t - t0)), w the pre-step weight (decoupled: the AdaGrad
    state sees only the loss gradient). The clock counts training steps (``interval:
    steps``) or training examples over all workers (``examples``); a row's first read
    counts one step. Rare rows are shrunk most, rows read every step by alpha."""

    type: Literal["freq_decay"]
    alpha: float = Field(gt=0.0, le=1.0, description="decay per unit of interval (step or example)")
    interval: Literal["steps", "examples"] = "steps"


class EmbeddingReset(_Strict):
    """``embedding_reset`` (MEDA, arXiv 2305.19531): at the start of the chosen passes
    (``every`` k-th pass after the first: passes k, 2k, ...; or the 0-based ``passes``
    listed), every embedding table (or the tables of the listed ``features``, all their
    replicas) is drawn again from the job's initialiser, with a seed derived from
    (training.seed, pass), and its row-wise AdaGrad state is zeroed; the dense layers
    and the dense optimizer keep their state. Default: every pass after the first."""

    type: Literal["embedding_reset"]
    every: int | None = Field(None, ge=1, le=1000, description="reset at passes k, 2k, ...")
    passes: list[Annotated[int, Field(ge=1, le=1000)]] | None = Field(None, min_length=1, max_length=1000)
    features: list[str] | None = Field(None, min_length=1)

    def reset_passes(self, num_passes: int) -> list[int]:
        """The 0-based passes at whose start the tables are reset."""
        if self.passes is not None:
            return sorted(p for p in set(self.passes) if p < num_passes)
        k = self.every or 1
        return list(range(k, num_passes, k))


class MinCount(_Strict):
    """``min_count`` (frequency admission, Zhang et al., arXiv 2209.06053): ids of a
    sparse feature seen fewer than ``k`` times in the training days (raw ids, counted
    once before training over every worker's rows) share one row of the feature's
    table(s); at evaluation, ids unseen or rare in training read that same row.
    ``per_feature`` overrides k for the named features (1 turns it off)."""

    type: Literal["min_count"]
    k: int = Field(ge=1, le=10**9, description="ids seen fewer than k times share a row")
    per_feature: dict[str, Annotated[int, Field(ge=1, le=10**9)]] = Field(default_factory=dict)

    def threshold(self, feature: str) -> int:
        return self.per_feature.get(feature, self.k)


Regularizer = Annotated[
    Union[
        SparseL2,
        SparseL1,
        MaxNorm,
        ConstNorm,
        SparseDropout,
        Dropout,
        DenseL2,
        SseSe,
        Freeze,
        LrSchedule,
        Shrink,
        MaxEntropy,
        SseGraph,
        FreqDecay,
        EmbeddingReset,
        MinCount,
    ],
    Field(discriminator="type"),
]
REGULARIZER_TYPES = (
    "sparse_l2",
    "sparse_l1",
    "max_norm",
    "const_norm",
    "sparse_dropout",
    "dropout",
    "dense_l2",
    "sse_se",
    "freeze",
    "lr_schedule",
    "shrink",
    "max_entropy",
    "sse_graph",
    "freq_decay",
    "embedding_reset",
    "min_count",
)


def check_regularizers(
    regularizers: list[Regularizer], data: DataSpec, num_passes: int, use_gpu: bool
) -> None:
    """Cross-checks of regularizer parameters against the data, ``training.num_passes``
    and ``scaling.use_gpu`` (raises ValueError naming the field: a JobSpec validator)."""
    kinds = [r.type for r in regularizers]
    dup = sorted({k for k in kinds if kinds.count(k) > 1})
    if dup:
        raise FieldValueError(("regularizers",), f"each type may appear once; repeated: {dup}")
    names = data.sparse_feature_names()
    passes = num_passes
    for i, r in enumerate(regularizers):
        if isinstance(r, SparseL2) and r.mode == "decouple_global" and not use_gpu:
            raise FieldValueError(
                ("regularizers", i, "mode"),
                "decouple_global runs in FBGEMM's CUDA kernel only "
                "(fbgemm-gpu-cpu has no CPU kernel for it and rectrain no exact fallback); "
                "set scaling.use_gpu: true or use mode: decouple",
            )
        if isinstance(r, (SparseDropout, SseSe)):
            for f in r.per_feature:
                if f not in names:
                    raise FieldValueError(
                        ("regularizers", i, "per_feature"),
                        f"'{f}' is not a sparse feature; choose among {names}",
                    )
        elif isinstance(r, Freeze) and r.from_pass >= passes:
            raise FieldValueError(
                ("regularizers", i, "from_pass"),
                f"{r.from_pass} is beyond training.num_passes "
                f"({passes}); passes are numbered from 0, so use 0..{passes - 1}",
            )
        elif isinstance(r, Shrink) and not r.at_pass_end and r.every_steps is None:
            raise FieldValueError(
                ("regularizers", i, "every_steps"),
                "shrink never runs with at_pass_end false and "
                "no every_steps; set every_steps or at_pass_end: true",
            )
        elif isinstance(r, (MaxEntropy, MinCount)):  # per_feature: feature name -> its value
            for f in r.per_feature:
                if f not in names:
                    raise FieldValueError(
                        ("regularizers", i, "per_feature"),
                        f"'{f}' is not a sparse feature; choose among {names}",
                    )
        elif isinstance(r, SseGraph):
            _check_sse_graph(i, r, data)
        elif isinstance(r, EmbeddingReset):
            _check_embedding_reset(i, r, names, passes)
        elif isinstance(r, LrSchedule):
            for field in ("sparse", "dense"):
                n = len(getattr(r, field))
                if n > passes:
                    raise FieldValueError(
                        ("regularizers", i, field),
                        f"{n} factors for training.num_passes = {passes}; give at most one factor per pass",
                    )


def _check_embedding_reset(i: int, r: EmbeddingReset, names: list[str], passes: int) -> None:
    if r.every is not None and r.passes is not None:
        raise FieldValueError(
            ("regularizers", i, "passes"),
            "give either every (reset every k-th pass) or passes (the list of passes), not both",
        )
    if r.passes is not None:
        late = sorted(p for p in r.passes if p >= passes)
        if late:
            raise FieldValueError(
                ("regularizers", i, "passes"),
                f"{late} are beyond training.num_passes ({passes}); "
                f"passes are numbered from 0 and pass 0 starts fresh anyway, so use 1..{passes - 1}",
            )
        if len(set(r.passes)) != len(r.passes):
            raise FieldValueError(("regularizers", i, "passes"), "each pass may appear once")
    elif r.every is not None and r.every >= passes:
        raise FieldValueError(
            ("regularizers", i, "every"),
            f"{r.every} never resets with training.num_passes = {passes} "
            f"(resets happen at passes every, 2*every, ... below num_passes); use 1..{max(passes - 1, 1)}",
        )
    elif r.every is None and passes < 2:
        raise FieldValueError(
            ("regularizers", i, "type"),
            "embedding_reset resets at the start of passes after the "
            "first, and training.num_passes is 1; raise num_passes",
        )
    for f in r.features or []:
        if f not in names:
            raise FieldValueError(
                ("regularizers", i, "features"), f"'{f}' is not a sparse feature; choose among {names}"
            )
    if r.features is not None and len(set(r.features)) != len(r.features):
        raise FieldValueError(("regularizers", i, "features"), "each feature may appear once")


def _check_sse_graph(i: int, r: SseGraph, data: DataSpec) -> None:
    names = data.sparse_feature_names()
    src = data.source
    if src == DataSource.CRITEO:
        raise FieldValueError(
            ("regularizers", i, "type"),
            "sse_graph needs a graph between ids, and the criteo "
            "source has none (its 26 columns are anonymous hashed categories); use sse_se "
            "(uniform replacement) instead, or a table source with a graph_column",
        )
    if src == DataSource.SYNTHETIC:
        if r.graph_column is not None:
            raise FieldValueError(
                ("regularizers", i, "graph_column"),
                "only for data.source 'table'; the synthetic "
                "source's graph is its ground-truth clusters (remove graph_column)",
            )
        allowed = [f for f in SYNTHETIC_GRAPH_FEATURES if f in names]
        what = "have ground-truth clusters"
    else:
        if r.graph_column is None:
            raise FieldValueError(
                ("regularizers", i, "graph_column"),
                f"required for data.source 'table': the sparse "
                f"column whose shared values link ids (e.g. a genre); choose among {names}",
            )
        if r.graph_column not in names:
            raise FieldValueError(
                ("regularizers", i, "graph_column"),
                f"'{r.graph_column}' is not a sparse column of data.columns; choose among {names}",
            )
        if r.features is None:
            raise FieldValueError(
                ("regularizers", i, "features"),
                f"required for data.source 'table': the sparse "
                f"features whose ids are replaced by neighbours through graph_column "
                f"'{r.graph_column}'",
            )
        allowed = [f for f in names if f != r.graph_column]
        what = "can be linked through graph_column"
    for f in r.features or []:
        if f not in allowed:
            raise FieldValueError(
                ("regularizers", i, "features"),
                f"'{f}' is not a sparse feature that {what}; choose among {allowed}",
            )
    if r.features is not None and len(set(r.features)) != len(r.features):
        raise FieldValueError(("regularizers", i, "features"), "each feature may appear once")
    graph = r.features if r.features is not None else allowed
    for f in r.per_feature:
        if f not in graph:
            raise FieldValueError(
                ("regularizers", i, "per_feature"), f"'{f}' is not one of the sse_graph features {graph}"
            )
