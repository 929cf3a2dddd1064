"""services.logs: one format, every line carries a job id (or ``-``)."""

from __future__ import annotations

import io
import logging

from services.logs import job_logger, setup_logging


def test_lines_carry_the_job_id():
    out = io.StringIO()
    root = logging.getLogger("rectrain")
    handlers, level = list(root.handlers), root.level
    try:
        setup_logging(stream=out)
        setup_logging(stream=out)  # a second call replaces, not doubles, the handler
        job_logger("rectrain.test", "0123456789abcdef").info("started")
        logging.getLogger("rectrain.test").warning("no job here")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("INFO rectrain.test job=0123456789abcdef started")
    assert lines[1].endswith("WARNING rectrain.test job=- no job here")
