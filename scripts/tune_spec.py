"""Single runs of one job spec with a few fields changed, in this process: NE per pass.

    PYTHONPATH=. .venv/bin/python scripts/tune_spec.py examples/movielens.yaml \\
        '{}' '{"data.batch_size": 1024}' '{"training.sparse_optimizer.lr": 0.08, "training.seed": 1}'

Each argument after the spec is one run: a JSON object of dotted field paths and their
values, applied to the spec (and validated like any spec). The run trains in this
process on one worker (the trainer's LocalSession, one torch thread), without Ray, and
prints train / validation / test NE and test AUC per pass, then the reference
predictors of its data (trainer/references.py). Tune on the validation NE; the test NE
is only reported. docs/movielens.md tuned examples/movielens.yaml this way.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from typing import Any

import torch

from trainer.loop import LocalSession, Trainer
from trainer.report import format_references
from trainer.spec import JobSpec, load_spec


def with_fields(spec: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(spec))
    for path, value in fields.items():
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    base = load_spec(argv[0]).model_dump(mode="json")
    passes: list[dict[str, Any]] = []
    for arg in argv[1:]:
        spec = JobSpec.model_validate(with_fields(base, json.loads(arg)))
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="rectrain-tune-") as tmp:
            passes = Trainer(spec, LocalSession(tmp), tmp).run()
        row = " | ".join(
            f"pass {p['pass'] + 1}: train {_f(p['train_ne'])} val {_f(p['val_ne'])} "
            f"test {_f(p['test_ne'])} AUC {_f(p['test_auc'])}"
            for p in passes
        )
        print(f"{arg}  ({time.perf_counter() - t0:.0f} s)  {row}", flush=True)
    if passes:
        print("\n".join(format_references({"references": passes[0].get("references")})))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
