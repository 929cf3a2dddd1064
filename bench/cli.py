"""``rectrain bench``: the benchmark harness as a subcommand of the rectrain CLI."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

NOTES_FILE = Path(__file__).with_name("notes.md")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tiny", action="store_true", help="smoke size (seconds; figures meaningless)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--out", default="runs/bench/bench-results.json", help="JSON results file (default: %(default)s)"
    )
    p.add_argument(
        "--markdown",
        default="BENCHMARKS.md",
        help="write the table between this harness's markers in this file (default: %(default)s)",
    )
    p.add_argument("--no-markdown", action="store_true", help="do not touch any markdown file")
    p.add_argument("--rows", type=int, default=None, help="rows per table (default 100000; tiny 2000)")
    p.add_argument("--dim", type=int, default=None, help="embedding dim (default 64; tiny 16)")
    p.add_argument("--batch", type=int, default=None, help="batch size per worker (default 2048; tiny 128)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per in-process path (default 24)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 6)")
    p.add_argument("--ray-steps", type=int, default=None, help="steps per pass of the Ray runs (default 20)")
    p.add_argument("--skip-ray", action="store_true", help="leave out the Ray Train runs")
    p.add_argument(
        "--scaling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the rows / dim / batch sweep (default on)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    p.add_argument(
        "--render",
        metavar="JSON",
        default=None,
        help="re-render the table / markdown from a results file; run nothing",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the torch.profiler pass")
    p.add_argument("--no-huge-pages", action="store_true", help="skip the huge-page ceiling")
    p.add_argument("--no-peer", action="store_true", help="skip TorchRec's own DLRM loop (the peer)")
    p.add_argument(
        "--over-arch",
        default=None,
        help="hidden sizes of the over arch, comma-separated (default 64,32; tiny 16); its first "
        "layer's width sets most of the dense arithmetic with --interaction concat",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="rectrain's paths with training.compile (torch.compile of the dense part; the peer and "
        "plain PyTorch stay eager); compilation happens in the warm-up, outside the timed rounds",
    )
    p.add_argument(
        "--interaction",
        choices=("dot", "concat"),
        default="dot",
        help="the model's interaction (model.interaction) for the trainer, plain PyTorch and Ray runs; "
        "concat has no interaction arithmetic, so the step/kernel ratio shows the plumbing; the peer "
        "(TorchRec's DLRM, dot only) is skipped (default: %(default)s)",
    )


def config_from_args(args: argparse.Namespace, argv: list[str]):
    from bench.config import BenchConfig, tiny_config

    cfg = tiny_config() if args.tiny else BenchConfig()
    w = cfg.workload
    if args.rows is not None:
        w = replace(w, rows=args.rows)
    if args.dim is not None:
        if args.dim % 4:
            raise SystemExit("rectrain bench: --dim must be a multiple of 4")
        w = replace(w, dim=args.dim)
    if args.batch is not None:
        w = replace(w, batch=args.batch)
    w = replace(w, interaction=args.interaction, compile=args.compile)
    if args.over_arch is not None:
        try:
            over = tuple(int(x) for x in args.over_arch.split(","))
        except ValueError:
            over = ()
        if not over or min(over) < 1:
            raise SystemExit("rectrain bench: --over-arch must be positive integers, e.g. 64,32")
        w = replace(w, over_arch=over)
    cfg = replace(
        cfg,
        workload=w,
        device=args.device,
        skip_ray=args.skip_ray,
        scaling=args.scaling,
        profile=not args.no_profile,
        huge_pages=not args.no_huge_pages,
        peer=not args.no_peer,
        command=" ".join(["rectrain bench", *map(shlex.quote, argv)]).strip(),
    )
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.rounds is not None:
        cfg = replace(cfg, rounds=args.rounds)
    if args.ray_steps is not None:
        cfg = replace(cfg, ray_steps=args.ray_steps)
    return cfg


def run_from_args(args: argparse.Namespace, argv: list[str]) -> int:
    import json

    from bench.harness import run, write_json
    from bench.report import format_text, write_markdown

    if args.render:
        res = json.loads(Path(args.render).read_text())
        tiny = res["meta"]["tiny"]
    else:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        cfg = config_from_args(args, argv)
        res = run(cfg, log=lambda s: print(s, flush=True))
        write_json(res, args.out)
        tiny = cfg.tiny
    print()
    print(format_text(res))
    print(f"\nJSON: {args.render or args.out}")
    if not args.no_markdown:
        notes = NOTES_FILE.read_text() if NOTES_FILE.exists() and not tiny else ""
        write_markdown(res, args.markdown, notes=notes)
        print(f"table written to {args.markdown}")
    return 0


def _cmd(args: argparse.Namespace) -> int:
    argv = sys.argv[sys.argv.index("bench") + 1 :] if "bench" in sys.argv else []
    return run_from_args(args, argv)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark rectrain against the FBGEMM kernel, plain PyTorch and "
        "the machine's gather ceiling (table, JSON, BENCHMARKS.md)",
    )
    add_arguments(p)
    p.set_defaults(func=_cmd)
