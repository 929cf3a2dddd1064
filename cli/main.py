"""``rectrain``: the trainer's, the control plane's and the benchmarks' commands in one.

Each layer adds its commands through its own ``register(subparsers)``:
``trainer.cli`` (run, predict), ``services.cli`` (serve, worker, submit, jobs, cancel,
follow, export, study, studies) and ``bench.cli`` (bench). :func:`trainer.cli.run_command`
runs the chosen one (one line on stderr for bad input, ``--debug`` for a traceback).
"""

from __future__ import annotations

import argparse
import sys

import bench.cli
import services.cli
import trainer.cli


def build_parser() -> argparse.ArgumentParser:
    p = trainer.cli.new_parser()
    sub = p.add_subparsers(dest="command", required=True)
    trainer.cli.register(sub)
    services.cli.register(sub)
    bench.cli.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    return trainer.cli.run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
