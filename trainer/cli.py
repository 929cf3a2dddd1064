"""The trainer's commands: ``run`` and ``predict``, and how every command ends.

``rectrain run SPEC`` trains locally (or on the Ray cluster at ``RAY_ADDRESS``). The
``rectrain`` console command itself is the top-level ``cli`` package, which adds these
commands with :func:`register` beside those of ``services.cli`` and ``bench.cli`` and
runs the chosen one through :func:`run_command`. ``python -m trainer.cli`` has the
trainer's commands only (the local launcher runs ``python -m trainer.cli run``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from trainer.errors import RectrainError

DESCRIPTION = "rectrain: train recommender models (TorchRec + FBGEMM), locally or on Ray"
EPILOG = "--debug (with any command): show the traceback of an unexpected error"


def _cmd_run(args: argparse.Namespace) -> int:
    import json

    from trainer.launch import run_job
    from trainer.report import format_pass_table
    from trainer.results import RESULTS_FILE
    from trainer.spec import load_spec

    spec = load_spec(args.spec, check_capacity=False)  # run_job checks what it must, once
    result = run_job(
        spec,
        run_dir=args.run_dir,
        job_id=args.job_id,
        redis_url=args.redis_url,
        progress=not args.no_progress,
        json_lines=args.json,
    )
    if args.json:  # the events came as JSON lines; the results are the last line
        print(
            json.dumps({"type": "results", **result.model_dump(mode="json")}, separators=(",", ":")),
            flush=True,
        )
        return 0
    print()
    print(format_pass_table(result))
    print(f"\nresults: {result.run_dir}/{RESULTS_FILE}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from trainer.launch import interactive
    from trainer.predict import predict

    r = predict(
        args.model,
        args.data,
        args.out,
        batch_size=args.batch_size,
        progress=not args.no_progress and interactive(),
    )
    print(f"{r['examples']:,} predictions: {r['out']}")
    if r["ne"] is not None:
        auc = f"{r['auc']:.4f}" if r["auc"] is not None else "n/a"
        print(f"NE {r['ne']:.6f}  calibration {r['calibration']:.4f}  AUC {auc}")
    else:
        print("no labels: no NE, calibration or AUC")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``run`` and ``predict`` to a ``rectrain`` parser's subcommands."""
    r = sub.add_parser("run", help="train a job spec (YAML/JSON) and print NE per pass")
    r.add_argument("spec", help="path to a job spec (.yaml/.yml/.json)")
    r.add_argument(
        "--run-dir",
        default=None,
        help="where checkpoints, events and results go (default: runs/<name>-<time>)",
    )
    r.add_argument(
        "--job-id", default=None, help="control-plane job id (with --redis-url: stream metrics to Redis)"
    )
    r.add_argument("--redis-url", default=None, help="Redis URL for the job's metrics stream")
    r.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (there is none anyway when stdout or stderr is not a terminal)",
    )
    r.add_argument(
        "--json",
        action="store_true",
        help="print each event, then the results, as one JSON object per line (for machines)",
    )
    r.set_defaults(func=_cmd_run)
    r = sub.add_parser(
        "predict", help="score data with an exported model (CPU) and write predictions as Parquet"
    )
    r.add_argument("model", help="an exported model file (rectrain export)")
    r.add_argument(
        "data",
        help="day:N[,M] (days of the model's own data source), a data spec (.yaml/.json with its "
        "test_days), or a .parquet/.csv table / Criteo .tsv file",
    )
    r.add_argument("--out", default="predictions.parquet", help="Parquet file (default: %(default)s)")
    r.add_argument("--batch-size", type=int, default=4096)
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_predict)


def new_parser() -> argparse.ArgumentParser:
    """An empty ``rectrain`` parser: add command groups to ``parser.add_subparsers(...)``."""
    return argparse.ArgumentParser(prog="rectrain", description=DESCRIPTION, epilog=EPILOG)


def build_parser() -> argparse.ArgumentParser:
    """The trainer's commands alone (``python -m trainer.cli``)."""
    p = new_parser()
    register(p.add_subparsers(dest="command", required=True))
    return p


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a cancel from the control plane): unwind like Ctrl-C, exit 143."""


_terminated = False


def _on_sigterm(signum, frame):  # noqa: ARG001
    global _terminated
    _terminated = True  # Ray may re-raise a plain KeyboardInterrupt: remember why
    raise _Terminated()


def _shutdown_ray() -> None:
    """Stop Ray Train's workers: ending the driver's Ray session aborts the run."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:
        pass


def _one_line(e: BaseException) -> str:
    text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` with ``parser`` and run the chosen command. Every command ends bad
    input with one line on stderr and a non-zero exit: 2 for what rectrain refused (the
    line names the file or field and what to change), 1 for anything else (its type and
    first line); ``--debug`` (anywhere) shows the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except RectrainError as e:
        if debug:
            raise
        print(f"rectrain: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`rectrain ... | head`): not an error
        # Python's own advice (docs: signal, "Note on SIGPIPE"): point stdout at devnull so
        # the flush at exit does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        _shutdown_ray()
        print("rectrain: cancelled" if _terminated else "rectrain: interrupted", file=sys.stderr)
        return 143 if _terminated else 130
    except Exception as e:  # not one of ours: still one line, the traceback with --debug
        if debug:
            raise
        print(f"rectrain {args.command}: {_one_line(e)} (--debug shows the traceback)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer.cli``: the trainer's commands (``rectrain`` is ``cli.main``)."""
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
