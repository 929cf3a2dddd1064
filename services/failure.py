"""Why a job failed, in the trainer's own words: the ``error`` a user reads.

A failed trainer leaves two things: its own reason (a ``lifecycle`` event of phase
``failed`` on the job's stream, e.g. "diverged at step 4 (loss = nan)", or the
``rectrain: …`` line its CLI prints on stderr) and the end of its log (stderr, or the
Ray job's log with Ray's own lines and ANSI colours). :func:`split_failure` returns the
first as the job's ``error`` and the second, cleaned, as ``error_log``.
"""

from __future__ import annotations

import re

from services import keys
from trainer.metrics.redis_sink import decode_entry

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_CLI_LINE = re.compile(r"(?:^|\s)rectrain: (.+)$")
_EVENTS_SCANNED = 200
MAX_ERROR_CHARS = 500


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line[:MAX_ERROR_CHARS]


async def _trainer_event_reason(r, job_id: str) -> str | None:
    """The message of the job's last ``lifecycle`` event of phase ``failed``."""
    try:
        entries = await r.xrevrange(keys.events_stream_key(job_id), count=_EVENTS_SCANNED)
    except Exception:  # the stream is a courtesy here: the log still says why
        return None
    for _eid, fields in entries:
        ev = decode_entry(fields)
        if ev.get("type") == "lifecycle" and ev.get("phase") == "failed" and ev.get("message"):
            return _first_line(str(ev["message"]))
    return None


def _cli_reason(log: str) -> str | None:
    """The last ``rectrain: …`` line of the trainer's CLI in a log."""
    for line in reversed(log.splitlines()):
        m = _CLI_LINE.search(line.strip())
        if m and m.group(1).strip() not in ("cancelled", "interrupted"):
            return m.group(1).strip()[:MAX_ERROR_CHARS]
    return None


async def split_failure(r, job_id: str, raw: str | None) -> tuple[str, str | None]:
    """``(error, error_log)`` of a failed job from the launcher's raw reason (exit status
    and log tail): the trainer's own reason first, else the log's ``rectrain:`` line,
    else the raw reason's first line; the cleaned raw text kept as ``error_log``."""
    log = strip_ansi(raw or "").strip()
    reason = await _trainer_event_reason(r, job_id) or _cli_reason(log) or _first_line(log)
    return reason or "the trainer failed (no reason recorded)", (log or None)
