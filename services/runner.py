"""``python -m services.runner JOB_ID [--adopt]``: the per-job launcher process.

Started (detached) by the API for each job (:mod:`services.launcher`); what it does is
:func:`services.job_runner.run_job`. Its settings come from the environment the API
passes (:func:`services.launch_env.settings_env`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from services.job_runner import run_job
from services.logs import setup_logging
from services.settings import Settings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.runner", description=__doc__.splitlines()[0])
    p.add_argument("job_id")
    p.add_argument("--adopt", action="store_true", help="re-attach to a job's running Ray job")
    args = p.parse_args(argv)
    # a stray SIGINT/SIGHUP (terminal closed) must not orphan the trainer mid-run
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    setup_logging(stream=sys.stdout)  # the API sends it to the job's runner.log
    return asyncio.run(run_job(Settings(), args.job_id, adopt=args.adopt))


if __name__ == "__main__":
    sys.exit(main())
