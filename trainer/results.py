"""A run's results as types: one pass (:class:`PassResult`), the run's headline
(:class:`RunSummary`) and the whole run (:class:`RunResult`, the run directory's
``results.json``). Torch-free (pydantic only): the trainer writes them, the control
plane reads them, the API serves them (api/models.py) and the Python client
(services/client.py) returns them.

Old ``results.json`` files stay readable: every field has a default and unknown keys
are kept (``extra="allow"``). ``model_dump()`` writes ``"pass"`` (the JSON name) for
:attr:`PassResult.pass_`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trainer.report import summarize_passes

RESULTS_FILE = "results.json"  # a run's results (RunResult), in its run directory and its store
EVENTS_FILE = "events.jsonl"  # a run's events, one JSON object a line, in its run directory


class PassResult(BaseModel):
    """One pass's results, as in the trainer's ``pass`` events and ``results.json``."""

    model_config = ConfigDict(
        extra="allow", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    pass_: int = Field(alias="pass", description="0-based pass index")
    train_ne: float | None = None
    train_calibration: float | None = None
    val_ne: float | None = Field(None, description="validation NE (null without validation data)")
    val_calibration: float | None = None
    val_auc: float | None = None
    val_ne_by_stratum: dict[str, float | None] = Field(default_factory=dict)
    val_examples_by_stratum: dict[str, int] = Field(default_factory=dict)
    test_ne: float | None = None
    test_calibration: float | None = None
    test_auc: float | None = Field(None, description="exact AUC over all test examples")
    test_ne_by_stratum: dict[str, float | None] = Field(default_factory=dict)
    test_examples_by_stratum: dict[str, int] = Field(default_factory=dict)
    oracle_val_ne: float | None = None
    oracle_test_ne: float | None = None
    references: dict[str, Any] | None = Field(
        None, description="the reference predictors on the run's data (trainer/references.py)"
    )
    train_examples: int | None = Field(None, description="examples of the pass, over all workers")
    train_seconds: float | None = Field(None, description="wall seconds of the pass's training")
    examples_per_s: float | None = None
    cpu_seconds: float | None = Field(
        None, description="training CPU time of the pass (every thread), summed over the workers"
    )
    cpu_seconds_per_example: float | None = Field(None, description="cpu_seconds / examples trained")
    global_step: int | None = Field(None, description="steps trained when the pass ended")


class RunSummary(BaseModel):
    """A run's headline numbers from its passes (:func:`trainer.report.summarize_passes`)."""

    model_config = ConfigDict(extra="allow")

    selection: Literal["validation", "none"] = Field(
        "none",
        description='"validation": the pass with the lowest validation NE is selected; '
        '"none": the spec has no validation data (or no pass has finished), nothing is selected',
    )
    selected_pass: int | None = Field(None, description="pass with the lowest validation NE (0-based)")
    val_ne_at_selected: float | None = Field(None, description="validation NE of the selected pass")
    test_ne_at_selected: float | None = Field(
        None, description="test NE of the selected pass: the headline (the test days choose nothing)"
    )
    last_pass: int | None = Field(None, description="last finished pass (0-based)")
    test_ne_at_last: float | None = Field(None, description="test NE of the last finished pass")
    oracle_val_ne: float | None = Field(
        None, description="NE of the true click probabilities on the validation data (synthetic data only)"
    )
    oracle_test_ne: float | None = Field(
        None, description="NE of the true click probabilities on the test days (synthetic data only)"
    )
    passes: list[PassResult] = Field(default_factory=list, description="per-pass table")
    last_examples_per_s: float | None = Field(None, description="latest training throughput")
    references: dict[str, Any] | None = Field(
        None,
        description="reference predictors on the job's data (trainer/references.py): constant (the "
        "training click rate) and logistic (L2 logistic regression on the same hashed ids, L2 chosen "
        "on validation), each with validation_ne, test_ne, validation_auc, test_auc",
    )
    pass1_worse_than_constant: bool | None = Field(
        None, description="true when pass 1's test NE is above the constant predictor's (null: unknown)"
    )

    def pass_result(self, index: int) -> PassResult | None:
        """The pass with 0-based index ``index`` (None when it has not finished)."""
        return next((p for p in self.passes if p.pass_ == index), None)

    @property
    def headline_pass(self) -> int | None:
        """The selected pass, else (no validation data) the last one."""
        return self.selected_pass if self.selected_pass is not None else self.last_pass


class WarmInfo(BaseModel):
    """A run on a warm worker group (:mod:`trainer.warm`)."""

    model_config = ConfigDict(extra="allow")

    group_run: int = Field(description="runs the group has done, this one included")
    worker_rss_bytes: list[int] = Field(default_factory=list, description="each rank's RSS after the run")
    restarts: int = Field(0, description="times the group was restarted after a worker died")


class RunResult(RunSummary):
    """A finished run: its summary and passes, where it ran and how long it took (``results.json``)."""

    run_dir: str | None = Field(None, description="the run directory (on the machine that ran it)")
    storage: str | None = Field(
        None, description="the job's store: its storage location or the run directory"
    )
    job_id: str | None = None
    status: str = "succeeded"
    num_workers: int | None = None
    wall_seconds: float | None = None
    wall_split: dict[str, float] | None = Field(
        None, description="where the wall time went (trainer.report.wall_split)"
    )
    warm: WarmInfo | None = None

    @classmethod
    def from_passes(cls, passes: list[dict[str, Any]] | list[PassResult], **fields: Any) -> RunResult:
        """The results of a run whose per-pass results are ``passes``, with the run's ``fields``."""
        rows = [p.model_dump() if isinstance(p, PassResult) else p for p in passes]
        return cls.model_validate({**fields, **summarize_passes(rows)})
