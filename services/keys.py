"""Every Redis key the control plane uses, its TTL and bounds, and one builder per key.

Nothing else in the repository spells a key string: the job store, the metrics bus,
the launcher and the trainer's stream sink all call the builders below.

Layout (``{id}`` is a job id, ``{owner}`` a token owner, ``{status}`` a JobStatus value):

    rectrain:job:{id}                      hash   the job record (see services.jobs)
    rectrain:job:{id}:events               stream the job's metric + status events (MAXLEN ~)
    rectrain:job:{id}:progress             hash   per-pass results and latest throughput,
                                                  kept even after the stream is trimmed
    rectrain:job:{id}:heartbeat            string the launcher's lease; expires when it dies
    rectrain:jobs                          zset   every job id, scored by creation time
    rectrain:jobs:status:{status}          zset   job ids in that status (all owners)
    rectrain:owner:{owner}:jobs            zset   one owner's job ids
    rectrain:owner:{owner}:status:{status} zset   one owner's job ids in that status
    rectrain:study:{id}                    hash   the study record (see services.studies)
    rectrain:study:{id}:runs               hash   run key -> job id (or a submission claim)
    rectrain:studies                       zset   every study id, scored by creation time
    rectrain:studies:active                zset   studies with runs not yet finished
    rectrain:owner:{owner}:studies         zset   one owner's study ids
"""

from __future__ import annotations

import re

KEY_PREFIX = "rectrain"

# The metrics stream keeps about this many events per job (XADD MAXLEN ~); per-pass
# results also live in the progress hash, so trimming never loses the NE table.
METRICS_STREAM_MAXLEN = 100_000

# The launcher refreshes its heartbeat every HEARTBEAT_INTERVAL_S; a heartbeat not
# refreshed for HEARTBEAT_TTL_S expires and the reaper marks the job failed.
HEARTBEAT_INTERVAL_S = 2.0
HEARTBEAT_TTL_S = 10.0

# How often each API process runs the reaper.
REAPER_INTERVAL_S = 2.0

# A queued job whose launcher never claimed it within this time is launched again
# (e.g. the API process died between accepting the job and starting its launcher).
QUEUED_RELAUNCH_AFTER_S = 30.0

_ID_RE = re.compile(r"^[0-9a-f]{16}$")


# A study run claimed for submission but without a job id after this long (the API
# died between the claim and recording the job) is looked up by label or submitted again.
STUDY_CLAIM_STALE_S = 30.0

# How often each API process reconciles active studies (submits missing runs, settles
# finished studies), and how often a study's SSE stream looks for changes.
STUDY_RECONCILE_INTERVAL_S = 2.0
STUDY_POLL_S = 1.0


def is_job_id(value: str) -> bool:
    """True for ids made by :func:`services.jobs.new_job_id` (keeps arbitrary text out of keys)."""
    return bool(_ID_RE.match(value))


def job_key(job_id: str) -> str:
    return f"{KEY_PREFIX}:job:{job_id}"


def events_stream_key(job_id: str) -> str:
    return f"{KEY_PREFIX}:job:{job_id}:events"


def progress_key(job_id: str) -> str:
    return f"{KEY_PREFIX}:job:{job_id}:progress"


def heartbeat_key(job_id: str) -> str:
    return f"{KEY_PREFIX}:job:{job_id}:heartbeat"


def jobs_index_key() -> str:
    return f"{KEY_PREFIX}:jobs"


def status_index_key(status: str) -> str:
    return f"{KEY_PREFIX}:jobs:status:{status}"


def owner_jobs_key(owner: str) -> str:
    return f"{KEY_PREFIX}:owner:{owner}:jobs"


def owner_status_key(owner: str, status: str) -> str:
    return f"{KEY_PREFIX}:owner:{owner}:status:{status}"


def progress_pass_field(pass_index: int) -> str:
    """Field of the progress hash holding one pass's result (JSON)."""
    return f"pass:{int(pass_index)}"


def is_study_id(value: str) -> bool:
    """Study ids have the same shape as job ids."""
    return is_job_id(value)


def study_key(study_id: str) -> str:
    return f"{KEY_PREFIX}:study:{study_id}"


def study_runs_key(study_id: str) -> str:
    return f"{KEY_PREFIX}:study:{study_id}:runs"


def studies_index_key() -> str:
    return f"{KEY_PREFIX}:studies"


def active_studies_key() -> str:
    return f"{KEY_PREFIX}:studies:active"


def owner_studies_key(owner: str) -> str:
    return f"{KEY_PREFIX}:owner:{owner}:studies"
