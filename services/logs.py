"""One logging setup for the control plane's processes (``rectrain serve``, runners).

Every line: time, level, logger, ``job=<id>`` (``-`` when the record is about no job),
message, so ``grep job=<id>`` finds a job's lines in the API's output and in its
runner's ``runner.log``. Pass the id as ``extra={"job_id": ...}`` (see :func:`job_logger`).
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

FORMAT = "%(asctime)s %(levelname)s %(name)s job=%(job_id)s %(message)s"


class _JobIdDefault(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            record.job_id = "-"
        return True


def setup_logging(level: int | str = logging.INFO, stream: IO[str] | None = None) -> None:
    """Route the ``rectrain.*`` loggers to ``stream`` (default stderr) in :data:`FORMAT`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
    handler.addFilter(_JobIdDefault())
    root = logging.getLogger("rectrain")
    for h in list(root.handlers):
        if getattr(h, "_rectrain", False):
            root.removeHandler(h)
    handler._rectrain = True  # type: ignore[attr-defined]  # marks ours, for a second call
    root.addHandler(handler)
    root.setLevel(level)


def job_logger(name: str, job_id: str) -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose records carry ``job_id``."""
    extra: dict[str, Any] = {"job_id": job_id}
    return logging.LoggerAdapter(logging.getLogger(name), extra)
