"""Every Redis key the control plane uses, its TTL and bounds, and one builder per key.

Nothing else in the repository spells a key string: the job store, the metrics bus,
the launcher and the trainer's stream sink all call the builders below (the job-stream
keys are defined in trainer/metrics/stream_keys.py, which the trainer imports, and
re-exported here).

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
    rectrain:queue:owner:{owner}           zset   one owner's queued job ids, in dispatch order
                                                  (score: priority, then arrival; see services.queue)
    rectrain:queue:owners                  zset   owners that have queued, scored by the turn
                                                  they were last served (round robin)
    rectrain:queue:turn                    string counter of dispatch turns
    rectrain:queue:seq                     string counter of arrivals (FIFO within a priority)
    rectrain:queue:info                    hash   job id -> JSON {position, reason}, rewritten
                                                  by the dispatcher every tick
    rectrain:queue:leader                  string the dispatching process's lease (TTL): an
                                                  API replica's or a `rectrain worker`'s
    rectrain:queue:wake                    channel (pub/sub) a job was queued: wake the dispatchers
"""

from __future__ import annotations

import re

# The keys of a job's metrics stream are the trainer's output protocol: they live with its
# writer (trainer/metrics/stream_keys.py; the trainer cannot import services/) and are
# re-exported here, so this module still lists and builds every key.
from trainer.metrics.stream_keys import (  # noqa: F401
    KEY_PREFIX,
    METRICS_STREAM_MAXLEN,
    event_keys_key,
    events_stream_key,
    progress_key,
    progress_pass_field,
)

# The launcher refreshes its heartbeat every HEARTBEAT_INTERVAL_S; a heartbeat not
# refreshed for HEARTBEAT_TTL_S expires and the reaper marks the job failed.
HEARTBEAT_INTERVAL_S = 2.0
HEARTBEAT_TTL_S = 10.0

# How often each API process runs the reaper.
REAPER_INTERVAL_S = 2.0

# A job the dispatcher claimed (queued -> starting) but whose runner never took its
# heartbeat within this time (the API died between claim and launch) is launched again.
QUEUED_RELAUNCH_AFTER_S = 30.0

# How often the dispatcher looks at the queue (it is also woken by submissions in its
# own process), and how long the dispatching replica's lease lasts without a refresh.
DISPATCH_INTERVAL_S = 1.0
DISPATCH_LEASE_TTL_S = 3.0

# Priorities are integers in [-PRIORITY_MAX, PRIORITY_MAX]; a queue score is
# -priority * QUEUE_PRIORITY_STRIDE + arrival sequence (exact in a double).
PRIORITY_MAX = 1000
QUEUE_PRIORITY_STRIDE = 2**40

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


def queue_owner_key(owner: str) -> str:
    return f"{KEY_PREFIX}:queue:owner:{owner}"


def queue_owners_key() -> str:
    return f"{KEY_PREFIX}:queue:owners"


def queue_turn_key() -> str:
    return f"{KEY_PREFIX}:queue:turn"


def queue_seq_key() -> str:
    return f"{KEY_PREFIX}:queue:seq"


def queue_info_key() -> str:
    return f"{KEY_PREFIX}:queue:info"


def dispatch_leader_key() -> str:
    return f"{KEY_PREFIX}:queue:leader"


def dispatch_wake_channel() -> str:
    """Pub/sub channel: a job was queued (services.submit publishes, services.worker listens)."""
    return f"{KEY_PREFIX}:queue:wake"


def queue_score(priority: int, seq: int) -> float:
    """Order within an owner's queue: higher priority first, then first come."""
    return float(-int(priority) * QUEUE_PRIORITY_STRIDE + int(seq))


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


def stream_ticket_key(ticket: str) -> str:
    """A short-lived SSE stream ticket -> ``owner job_id`` (string, with a TTL)."""
    return f"{KEY_PREFIX}:ticket:{ticket}"
