"""Run examples/study.yaml: baseline vs each regularizer, test NE per pass.

    .venv/bin/python examples/study.py examples/study.yaml [--out runs/study] [--only a,b] [--separate]

Prints a table (rows: variants; columns: test NE after pass 1..N, and the NE by
stratum of the last pass) and writes <out>/study.json. Ray: local, or RAY_ADDRESS.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import yaml

from trainer.launch import run_job
from trainer.spec import parse_spec


def variant_specs(study_path: Path, only: set[str] | None, separate: bool):
    study = yaml.safe_load(study_path.read_text())
    base = yaml.safe_load((study_path.parent / study["base"]).read_text())
    passes = sorted(study["num_passes"])
    for name, regs in study["variants"].items():
        if only and name not in only:
            continue
        for n in passes if separate else [passes[-1]]:
            d = copy.deepcopy(base)
            d.setdefault("training", {})["num_passes"] = n
            d["regularizers"] = regs or []
            yield name, n, parse_spec(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--out", type=Path, default=Path("runs") / time.strftime("study-%Y%m%d-%H%M%S"))
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--separate", action="store_true", help="train each num_passes separately")
    args = ap.parse_args()
    only = {s for s in args.only.split(",") if s} or None
    results: dict[str, dict] = {}
    for name, n, spec in variant_specs(args.study, only, args.separate):
        out = run_job(spec, run_dir=args.out / f"{name}-p{n}", progress=False)
        ne = [p.get("test_ne") for p in out["passes"]]
        results[f"{name}" if not args.separate else f"{name}@{n}"] = {
            "test_ne_per_pass": ne,
            "last_pass_ne_by_stratum": out["passes"][-1].get("test_ne_by_stratum") if out["passes"] else None,
            "run_dir": out["run_dir"],
        }
        print(
            f"{name:>22s} (num_passes {n}): " + "  ".join(f"{x:.5f}" if x is not None else "-" for x in ne),
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.json").write_text(json.dumps(results, indent=2))
    width = max(len(r["test_ne_per_pass"]) for r in results.values())
    print(
        "\n"
        + f"{'variant':>22s} | "
        + " | ".join(f"pass {i + 1:<3d}" for i in range(width))
        + " | frequent / medium / rare (last pass)"
    )
    for name, r in results.items():
        cells = [f"{x:.5f} " if x is not None else "   -    " for x in r["test_ne_per_pass"]]
        s = r["last_pass_ne_by_stratum"] or {}
        strata = " / ".join(
            f"{s[k]:.4f}" if s.get(k) is not None else "-" for k in ("frequent", "medium", "rare")
        )
        print(f"{name:>22s} | " + " | ".join(cells) + f" | {strata}")
    print(f"\nwrote {args.out / 'study.json'}")


if __name__ == "__main__":
    main()
