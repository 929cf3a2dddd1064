"""The Redis keys of a job's metrics stream: what the trainer's writer
(:mod:`trainer.metrics.redis_sink`) and the control plane's readers share.

They are the trainer's output protocol, so they live in the trainer package (which never
imports services/); :mod:`services.keys` re-exports them beside every other key and
documents the whole layout.
"""

from __future__ import annotations

KEY_PREFIX = "rectrain"

# The metrics stream keeps about this many events per job (XADD MAXLEN ~); per-pass
# results also live in the progress hash, so trimming never loses the NE table.
METRICS_STREAM_MAXLEN = 100_000


def events_stream_key(job_id: str) -> str:
    return f"{KEY_PREFIX}:job:{job_id}:events"


def progress_key(job_id: str) -> str:
    return f"{KEY_PREFIX}:job:{job_id}:progress"


def progress_pass_field(pass_index: int) -> str:
    """Field of the progress hash holding one pass's result (JSON)."""
    return f"pass:{int(pass_index)}"


def event_keys_key(job_id: str) -> str:
    """Set of the (type, step, pass, phase) keys of a job's non-``train_window`` events
    already in its stream: makes writes and replays idempotent."""
    return f"{KEY_PREFIX}:job:{job_id}:seen"
