"""A run's summary (the pass selected by validation NE, the oracle NE, the reference
predictors) and its terminal table. Torch-free: the control plane summarises jobs with the same rule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # trainer.results builds on summarize_passes
    from trainer.results import RunSummary


def summarize_passes(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's headline numbers from its per-pass results.

    The *selected pass* is the pass with the lowest validation NE (``selection``
    "validation"); its test NE is the headline, ``test_ne_at_selected``. The test
    days never choose anything. Without validation data there is no selection
    (``selected_pass`` None, ``selection`` "none") and readers show the last pass.
    """
    validated = [p for p in passes if p.get("val_ne") is not None]
    sel = min(validated, key=lambda p: (p["val_ne"], p["pass"])) if validated else None
    last = passes[-1] if passes else None

    def first(key: str) -> Any:  # the oracle (and the references) do not depend on the pass
        return next((p[key] for p in passes if p.get(key) is not None), None)

    return {
        "passes": passes,
        "selection": "validation" if sel else "none",
        "selected_pass": sel["pass"] if sel else None,
        "val_ne_at_selected": sel["val_ne"] if sel else None,
        "test_ne_at_selected": sel.get("test_ne") if sel else None,
        "last_pass": last["pass"] if last else None,
        "test_ne_at_last": last.get("test_ne") if last else None,
        "oracle_val_ne": first("oracle_val_ne"),
        "oracle_test_ne": first("oracle_test_ne"),
        "last_examples_per_s": last.get("examples_per_s") if last else None,
        # the constant and logistic-regression predictors on the same data (trainer/references.py)
        "references": first("references"),
        "pass1_worse_than_constant": pass1_worse_than_constant(passes, first("references")),
    }


def _ref_ne(refs: dict[str, Any] | None, predictor: str, split: str) -> float | None:
    ne = ((refs or {}).get(predictor) or {}).get(f"{split}_ne")
    return ne if isinstance(ne, (int, float)) else None


def pass1_worse_than_constant(passes: list[dict[str, Any]], refs: dict[str, Any] | None) -> bool | None:
    """True when the first pass's test NE is above the constant predictor's (predicting
    the training click rate for every example): the model learned less than nothing.
    None when either is unknown."""
    const = _ref_ne(refs, "constant", "test")
    p1 = next((p.get("test_ne") for p in passes if p.get("pass") == 0), None)
    if const is None or p1 is None:
        return None
    return bool(p1 > const)


WALL_PARTS = ("waiting_s", "startup_s", "data_s", "training_s", "evaluation_s", "checkpoint_s")


def wall_split(
    wall_s: float, timings: dict[str, float], *, waiting_s: float = 0.0, startup_s: float | None = None
) -> dict[str, float]:
    """Where a run's wall time went (seconds): ``waiting`` (queued before it started),
    ``startup`` (processes, imports, process group, model build and sharding, and what
    the other parts do not cover), ``data`` (building the dataset; 0 when a warm worker
    had it), ``training``, ``evaluation``, ``checkpoint`` (rank 0's timings, the
    trainer's ``Trainer.timings``). ``wall_s`` is the run's wall from dispatch to its
    results (``waiting_s`` is added to it). ``startup_s`` None: the remainder of the
    wall; given (a warm run): as given, with the remainder added to it too."""
    data = float(timings.get("data_s", 0.0))
    training = float(timings.get("training_s", 0.0))
    evaluation = float(timings.get("evaluation_s", 0.0))
    checkpoint = float(timings.get("checkpoint_s", 0.0))
    measured = data + training + evaluation + checkpoint
    startup = max(wall_s - measured, 0.0) + (startup_s or 0.0)
    return {
        "waiting_s": waiting_s,
        "startup_s": startup,
        "data_s": data,
        "training_s": training,
        "evaluation_s": evaluation,
        "checkpoint_s": checkpoint,
        "wall_s": waiting_s + startup + measured,
    }


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def format_headline(result: RunSummary) -> list[str]:
    """The selected pass (or "no validation data" and the last pass) and the oracle NE."""
    lines = []
    sel = result.selected_pass
    if sel is not None:
        lines.append(
            f"selected pass {sel + 1} (*, lowest validation NE {_fmt(result.val_ne_at_selected)}): "
            f"test NE {_fmt(result.test_ne_at_selected)}"
        )
    elif result.last_pass is not None:
        lines.append(
            f"no validation data, no pass selected: last pass {result.last_pass + 1} "
            f"test NE {_fmt(result.test_ne_at_last)}"
        )
    if result.oracle_val_ne is not None or result.oracle_test_ne is not None:
        lines.append(
            f"oracle NE (true click probabilities): validation {_fmt(result.oracle_val_ne)}  "
            f"test {_fmt(result.oracle_test_ne)}"
        )
    lines += format_references(result)
    return lines


def format_references(result: RunSummary) -> list[str]:
    """The reference predictors' lines (and the warning when pass 1 is worse than the constant)."""
    refs = result.references
    if not refs:
        return []
    if refs.get("error"):
        return [f"reference predictors: not computed ({refs['error']})"]
    lines = []
    const, logit = refs.get("constant") or {}, refs.get("logistic") or {}
    if const:
        lines.append(
            f"constant NE (training click rate {_fmt(const.get('click_rate'))}): "
            f"validation {_fmt(_ref_ne(refs, 'constant', 'validation'))}  "
            f"test {_fmt(_ref_ne(refs, 'constant', 'test'))}"
        )
    if logit:
        on = "validation" if logit.get("l2_chosen_on") == "validation" else "a training hold-out"
        lines.append(
            f"logistic regression NE (same hashed ids, L2 {logit.get('l2', 0):g} chosen on {on}): "
            f"validation {_fmt(_ref_ne(refs, 'logistic', 'validation'))}  "
            f"test {_fmt(_ref_ne(refs, 'logistic', 'test'))}"
        )
    if result.pass1_worse_than_constant:
        first = result.pass_result(0)
        lines.append(
            f"warning: pass 1 test NE {_fmt(first.test_ne if first else None)} is worse than the constant "
            f"predictor's {_fmt(_ref_ne(refs, 'constant', 'test'))}: this model learns less than the "
            "click rate (check the split, the features and the learning rate)"
        )
    return lines


def format_pass_table(result: RunSummary) -> str:
    """One row per pass: train/validation/test NE, test calibration, AUC, NE per
    stratum, throughput; ``*`` marks the pass selected by validation NE."""
    head = (
        f"{'pass':>4}  {'train NE':>8}  {'val NE':>8}  {'test NE':>8}  {'calib':>6}  {'AUC':>6}  "
        f"{'NE freq':>8}  {'NE med':>8}  {'NE rare':>8}  {'ex/s':>9}"
    )
    lines = [head, "-" * len(head)]
    sel = result.selected_pass
    for p in result.passes:
        st = p.test_ne_by_stratum
        mark = " *" if p.pass_ == sel else ""
        lines.append(
            f"{p.pass_ + 1:>4}  {_fmt(p.train_ne):>8}  {_fmt(p.val_ne):>8}  "
            f"{_fmt(p.test_ne):>8}  "
            f"{_fmt(p.test_calibration, '.3f'):>6}  {_fmt(p.test_auc):>6}  "
            f"{_fmt(st.get('frequent')):>8}  {_fmt(st.get('medium')):>8}  {_fmt(st.get('rare')):>8}  "
            f"{_fmt(p.examples_per_s, ',.0f'):>9}{mark}"
        )
    lines += format_headline(result)
    return "\n".join(lines)
