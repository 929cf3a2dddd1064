"""Reference predictors on a run's own data: what a model has to beat.

Two predictors, scored on the validation and test rows the run scores itself:

- **constant**: every example gets the training rows' click rate. Its NE is about 1
  (NE divides by the entropy of the scored rows' *own* click rate, so it exceeds 1 by
  however far that rate moved from the training rate). A model whose test NE is
  above it has learned less than nothing.
- **logistic**: a logistic regression on exactly the inputs the model sees: every
  sparse id hashed to its table row (one column per (table, row), a count for
  multi-valued cells as the model's sum pooling does), every replica's table, and the
  dense features standardised on the training rows. L2 strength chosen on the
  validation rows from :data:`L2_GRID` (without validation data: on the last
  :data:`HOLDOUT_FRACTION` of the training rows, then refitted on all of them).

Computed once per dataset: the result is cached under ``$XDG_CACHE_HOME/rectrain/
references/`` (default ``~/.cache``), keyed by a hash of everything that decides the
rows and their hashed ids (the data spec without batching/strata settings, the hash
size and replicas, the data files' sizes and modification times, this module's
version and grid), so the runs of a study (same data, other seeds and regularizers)
read it instead of refitting.

Why our own solver: scikit-learn is only a test dependency here; the fit is a smooth
convex problem that scipy's L-BFGS solves on a ``scipy.sparse`` design matrix
(checked against ``sklearn.linear_model.LogisticRegression`` in
tests/trainer/test_references.py). NE is computed with numpy on one process (rank 0
alone: torchrec's metric module would all-reduce with ranks that are not there) by
the same definition as ``torchrec.metrics`` NE, checked against it in the same test.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.optimize
import scipy.sparse as sp
from scipy.special import expit, log_expit
from threadpoolctl import threadpool_limits

if TYPE_CHECKING:
    from trainer.data.dataset import RankData
    from trainer.data.part import Part
    from trainer.spec import JobSpec

VERSION = 1
#: L2 strengths tried (penalty ``l2/2 * ||w||^2`` added to the *mean* log loss; the
#: intercept is not penalised), chosen on validation NE
L2_GRID = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
HOLDOUT_FRACTION = 0.1
#: the grid walk stops once the selection NE has risen this many strengths in a row
#: past its best (the weakest penalties are the slowest fits, and NE is ~unimodal in l2)
PATIENCE = 2
MAX_ITER = 3000
#: torchrec's NE clamps predictions to [eta, 1 - eta]
_ETA = 1e-12
# data fields that do not change which rows are scored or which ids they carry
_NOT_DATA = {
    "batch_size",
    "shuffle",
    "prefetch_batches",
    "stratum_feature",
    "frequent_min_count",
    "rare_max_count",
}


# ------------------------------------------------------------------ metrics


def entropy(rate: float) -> float:
    """Binary entropy (nats) of a click rate."""
    r = min(max(rate, _ETA), 1 - _ETA)
    return -(r * math.log(r) + (1 - r) * math.log(1 - r))


def normalized_entropy(prob: np.ndarray, label: np.ndarray) -> float:
    """Mean log loss of ``prob`` over the entropy of ``label``'s own click rate (the
    definition ``torchrec.metrics`` NE uses, predictions clamped the same way)."""
    p = np.clip(np.asarray(prob, dtype=np.float64), _ETA, 1 - _ETA)
    y = np.asarray(label, dtype=np.float64)
    loss = -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))
    return float(loss / entropy(float(y.mean())))


def _ne_from_logits(z: np.ndarray, y: np.ndarray) -> float:
    # log-loss from logits without forming probabilities (no clamping needed)
    loss = -np.mean(y * log_expit(z) + (1 - y) * log_expit(-z))
    return float(loss / entropy(float(y.mean())))


def _auc(prob: np.ndarray, label: np.ndarray) -> float | None:
    import torch

    from trainer.metrics.auc import weighted_auc  # the model's AUC, the same definition

    p = torch.from_numpy(np.asarray(prob, dtype=np.float64))
    y = torch.from_numpy(np.asarray(label, dtype=np.float64))
    return weighted_auc(p, y, torch.ones_like(y))


# ------------------------------------------------------------------ design matrix


def design_matrix(part: Part, features: list[str], replicas: int, hash_size: int) -> sp.csr_matrix:
    """One row per example, one column per (feature, replica, table row): the count of
    that row among the example's ids (the model sums a bag's embeddings)."""
    n = len(part)
    blocks = []
    for fi, f in enumerate(features):
        row_of = np.repeat(np.arange(n, dtype=np.int64), part.lengths[f])
        for r in range(replicas):
            cols = part.rows[f][r] + (fi * replicas + r) * hash_size
            blocks.append((row_of, cols))
    rows = np.concatenate([b[0] for b in blocks]) if blocks else np.zeros(0, np.int64)
    cols = np.concatenate([b[1] for b in blocks]) if blocks else np.zeros(0, np.int64)
    width = len(features) * replicas * hash_size
    m = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, width)).tocsr()
    m.sum_duplicates()
    return m


class _Inputs:
    """The design matrices of the training, validation and test rows, restricted to the
    columns the training rows use (a column no training row has keeps weight 0 under any
    L2 penalty, so dropping it changes nothing), plus the standardised dense features."""

    def __init__(self, train: Part, others: list[Part | None], spec: JobSpec) -> None:
        features = spec.data.sparse_feature_names()
        args = (features, spec.model.num_replicas, spec.model.hash_size)
        xt = design_matrix(train, *args)
        used = np.flatnonzero(np.diff(xt.tocsc().indptr))
        keep = np.zeros(xt.shape[1], dtype=bool)
        keep[used] = True
        mean = train.dense.mean(axis=0) if train.dense.shape[1] else None
        sd = train.dense.std(axis=0) if train.dense.shape[1] else None

        def build(part: Part, x: sp.csr_matrix | None = None) -> sp.csr_matrix:
            x = design_matrix(part, *args) if x is None else x
            x = x[:, used]
            if mean is not None and sd is not None:
                d = (part.dense.astype(np.float64) - mean) / np.where(sd > 0, sd, 1.0)
                x = sp.hstack([x, sp.csr_matrix(d)], format="csr")
            return x

        self.train = build(train, xt)
        self.others = [None if p is None else build(p) for p in others]
        self.columns = int(self.train.shape[1])


# ------------------------------------------------------------------ logistic regression


def fit_logistic(
    x: sp.csr_matrix, y: np.ndarray, l2: float, init: np.ndarray | None = None
) -> tuple[np.ndarray, float, int]:
    """Minimise ``mean(log loss) + l2/2 * ||w||^2`` (intercept unpenalised) with
    L-BFGS; returns (w, intercept, iterations). Exact to the solver's tolerance."""
    y = np.asarray(y, dtype=np.float64)
    n, d = x.shape
    xt = x.T.tocsr()

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:d], theta[d]
        z = x @ w + b
        lp = log_expit(z)  # log p; log(1 - p) = log p - z; p = exp(log p)
        loss = -np.mean(lp - (1 - y) * z) + 0.5 * l2 * float(w @ w)
        r = (np.exp(lp) - y) / n
        grad = np.empty(d + 1)
        grad[:d] = xt @ r + l2 * w
        grad[d] = r.sum()
        return float(loss), grad

    if init is None:
        rate = min(max(float(y.mean()), 1e-6), 1 - 1e-6)
        init = np.zeros(d + 1)
        init[d] = math.log(rate / (1 - rate))
    res = scipy.optimize.minimize(
        f,
        init,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": MAX_ITER, "maxcor": 20, "ftol": 1e-10, "gtol": 1e-7},
    )
    return res.x[:d], float(res.x[d]), int(res.nit)


def _logistic(inputs: _Inputs, y_train: np.ndarray, y_val: np.ndarray | None, y_test: np.ndarray | None):
    """Fit along :data:`L2_GRID` (strongest first, each fit warm-starting the next),
    choose on validation NE (or a training hold-out), report validation and test."""
    x_val, x_test = inputs.others
    if x_val is not None and y_val is not None:
        x_fit, y_fit, x_sel, y_sel, chosen_on = inputs.train, y_train, x_val, y_val, "validation"
    else:
        cut = len(y_train) - max(1, int(round(HOLDOUT_FRACTION * len(y_train))))
        x_fit, y_fit = inputs.train[:cut], y_train[:cut]
        x_sel, y_sel = inputs.train[cut:], y_train[cut:]
        chosen_on = f"the last {HOLDOUT_FRACTION:.0%} of the training rows"
    curve: dict[str, float] = {}
    best: tuple[float, float, np.ndarray] | None = None
    theta = None
    worse = iterations = 0
    for l2 in sorted(L2_GRID, reverse=True):
        w, b, nit = fit_logistic(x_fit, y_fit, l2, theta)
        iterations += nit
        theta = np.append(w, b)
        ne = _ne_from_logits(x_sel @ w + b, y_sel)
        curve[f"{l2:g}"] = ne
        if best is None or ne < best[0]:
            best, worse = (ne, l2, theta), 0
        else:
            worse += 1
            if worse >= PATIENCE:
                break
    assert best is not None
    _, l2, theta = best
    if chosen_on != "validation":  # refit on every training row at the chosen strength
        w, b, _ = fit_logistic(inputs.train, y_train, l2, theta)
        theta = np.append(w, b)
    w, b = theta[:-1], float(theta[-1])
    out: dict[str, Any] = {"l2": l2, "l2_chosen_on": chosen_on, "selection_ne_by_l2": curve}
    if l2 in (min(L2_GRID), max(L2_GRID)):
        out["note"] = f"l2 {l2:g} is at the end of the grid tried: one beyond it might do better"
    for name, x, y in (("validation", x_val, y_val), ("test", x_test, y_test)):
        if x is None or y is None:
            out[f"{name}_ne"] = out[f"{name}_auc"] = None
            continue
        z = x @ w + b
        out[f"{name}_ne"] = _ne_from_logits(z, y)
        out[f"{name}_auc"] = _auc(expit(z), y)
    out["train_ne"] = _ne_from_logits(inputs.train @ w + b, y_train)
    out["columns"] = inputs.columns
    out["iterations"] = iterations
    return out


def _constant(rate: float, y_val: np.ndarray | None, y_test: np.ndarray | None) -> dict[str, Any]:
    out: dict[str, Any] = {"click_rate": rate}
    for name, y in (("validation", y_val), ("test", y_test)):
        if y is None:
            out[f"{name}_ne"] = out[f"{name}_auc"] = None
            continue
        out[f"{name}_ne"] = normalized_entropy(np.full(len(y), rate), y)
        out[f"{name}_auc"] = 0.5  # one score for every row: every pair tied
    return out


def compute(spec: JobSpec, data: RankData) -> dict[str, Any]:
    """The reference predictors on ``data`` (a single-rank view: every row)."""
    t0 = time.perf_counter()
    # one BLAS thread: the L-BFGS updates are small, and an idle-spinning OpenBLAS pool
    # made them ~6x slower on a loaded 2-core machine
    with threadpool_limits(limits=1, user_api="blas"):
        return _compute(spec, data, t0)


def _compute(spec: JobSpec, data: RankData, t0: float) -> dict[str, Any]:
    y_train = data.train.label.astype(np.float64)
    y_val = None if data.val is None else data.val.label.astype(np.float64)
    y_test = None if data.test is None else data.test.label.astype(np.float64)
    rate = float(y_train.mean())
    inputs = _Inputs(data.train, [data.val, data.test], spec)
    return {
        "constant": _constant(rate, y_val, y_test),
        "logistic": _logistic(inputs, y_train, y_val, y_test),
        "rows": {
            "train": len(y_train),
            "validation": 0 if y_val is None else len(y_val),
            "test": 0 if y_test is None else len(y_test),
        },
        "seconds": time.perf_counter() - t0,
    }


# ------------------------------------------------------------------ cache


def _file_stats(spec: JobSpec) -> list[list[Any]]:
    """(location, size, mtime_ns) of every data file of the run's days: a file rewritten
    under the same name is new data."""
    from trainer import storage
    from trainer.data.files import data_files

    path = spec.data.path
    if path is None:
        return []
    d = spec.data
    days = sorted(set(d.train_days) | set(d.validation_days) | set(d.test_days))
    locs = sorted({f for day in days for f in data_files(path, day if "{day}" in path else None)})
    out = []
    for loc in locs:
        fs, p = storage.resolve(loc)
        info = fs.get_file_info(p)
        out.append([loc, info.size, info.mtime_ns])
    return out


def cache_key(spec: JobSpec) -> str:
    """Hash of everything that decides the references' rows, ids and fit."""
    key = {
        "version": VERSION,
        "grid": [list(L2_GRID), PATIENCE, MAX_ITER],
        "holdout": HOLDOUT_FRACTION,
        "data": spec.data.model_dump(mode="json", exclude=_NOT_DATA),
        "hash_size": spec.model.hash_size,
        "num_replicas": spec.model.num_replicas,
        "files": _file_stats(spec),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rectrain" / "references"


def references(spec: JobSpec, data: RankData | None = None) -> dict[str, Any]:
    """The references of ``spec``'s data, from the cache or computed (and cached).

    ``data``: the run's own data when it already holds every row (one worker); else the
    rows are read again here, on this process alone."""
    key = cache_key(spec)
    path = cache_dir() / f"{key}.json"
    try:
        out = json.loads(path.read_text())
        out["cached"] = True
        return out
    except (OSError, ValueError):
        pass
    if data is None or data.world_size != 1:
        from trainer.data.dataset import RankData

        # regularizers cannot change the rows; without them no sse_graph is built
        data = RankData(spec.model_copy(update={"regularizers": []}), 0, 1)
    out = {"key": key, **compute(spec, data)}
    try:  # several runs of a study may race here: each writes whole, the rename is atomic
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.part")
        tmp.write_text(json.dumps(out))
        tmp.replace(path)
    except OSError:
        pass  # an unwritable cache only costs a recomputation next time
    out["cached"] = False
    return out


def for_run(spec: JobSpec, data: RankData | None = None) -> dict[str, Any] | None:
    """:func:`references` for a training run: a failure here never fails the run (it
    is reported in place of the references, and on stderr)."""
    try:
        return references(spec, data)
    except Exception as e:  # noqa: BLE001 (a reference is a reading aid, not the job)
        import sys

        print(f"rectrain: reference predictors failed: {type(e).__name__}: {e}", file=sys.stderr)
        return {"error": f"{type(e).__name__}: {e}"}
