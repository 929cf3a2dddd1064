"""What a study is in Redis: its record, its errors and its status (derived, never stored
until it has ended).

A study is a hash (``keys.study_key``) plus its runs hash (``keys.study_runs_key``: run
key -> job id, or a submission claim ``claim:<time>`` while the run's job is being
submitted). :func:`study_status` derives a study's status from its jobs every time it
is read; :func:`read_study` reads both hashes. The store is :mod:`services.studies`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from services import keys
from services.job_record import JobRecord, JobStatus
from services.redis_conn import text
from trainer.errors import RectrainError
from trainer.study_spec import Expansion, Run, StudySpec, expand

CLAIM_PREFIX = "claim:"  # a run's value in the runs hash while its job is being submitted
FINISHED = ("succeeded", "failed", "cancelled")  # the final statuses
RunList = list[Run]  # (StudyStore.list shadows the builtin inside the class)


class StudyNotFound(RectrainError):
    """No study with this id (or not visible to this owner)."""


class StudyConflict(RectrainError):
    """Not allowed in the study's current state (e.g. delete while runs are active)."""


@dataclass
class StudyRecord:
    id: str
    owner: str
    spec: dict[str, Any]
    created_at: float
    name: str | None = None
    cancel_requested: bool = False
    finished_at: float | None = None
    final_status: str | None = None
    error: str | None = None  # why the study cannot run (it was stopped)
    waiting: str | None = None  # why submission is paused (e.g. the owner's queue is full)
    runs: dict[str, str] = field(default_factory=dict)  # run key -> job id (or claim)

    @classmethod
    def from_hash(cls, h: dict[str, str], runs: dict[str, str]) -> "StudyRecord":
        return cls(
            id=h["id"],
            owner=h["owner"],
            spec=json.loads(h["spec"]),
            created_at=float(h["created_at"]),
            name=h.get("name") or None,
            cancel_requested=h.get("cancel_requested") == "1",
            finished_at=float(h["finished_at"]) if h.get("finished_at") else None,
            final_status=h.get("final_status") or None,
            error=h.get("error") or None,
            waiting=h.get("waiting") or None,
            runs=runs,
        )

    def expansion(self) -> Expansion:
        # every arm's job spec is validated: seconds for thousands of arms, so the
        # reconciler's sweeps (on the event loop) reuse one expansion per spec
        return _expansion_of(json.dumps(self.spec, sort_keys=True))

    def job_ids(self) -> dict[str, str]:
        return {k: v for k, v in self.runs.items() if not v.startswith(CLAIM_PREFIX)}


@functools.lru_cache(maxsize=64)
def _expansion_of(spec_json: str) -> Expansion:
    return expand(StudySpec.model_validate(json.loads(spec_json)))


async def read_study(r: aioredis.Redis, study_id: str) -> StudyRecord | None:
    """The study and its runs (one pipeline); None when there is no such study."""
    if not keys.is_study_id(study_id):
        return None
    async with r.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.study_key(study_id))
        pipe.hgetall(keys.study_runs_key(study_id))
        h, runs = await pipe.execute()
    return StudyRecord.from_hash(h, runs) if h else None


def study_status(record: StudyRecord, n_runs: int, jobs: dict[str, JobRecord], more: bool = False) -> str:
    """The status of a study with ``n_runs`` runs now and these jobs (run key -> job);
    ``more``: a staged study will generate further runs (its next stage)."""
    statuses = [j.status for j in jobs.values()]
    pending = n_runs - len(statuses) if not record.cancel_requested else 0
    if more and not record.cancel_requested:
        pending = max(pending, 1)
    if pending > 0 or any(not s.is_terminal for s in statuses):
        if record.cancel_requested:
            return "cancelling"
        return "running" if any(s != JobStatus.QUEUED for s in statuses) else "queued"
    if record.cancel_requested:
        return "failed" if record.error else "cancelled"  # stopped by fail(): the error says why
    if statuses and all(s == JobStatus.SUCCEEDED for s in statuses):
        return "succeeded"
    return "failed"


class StudyTracking:
    """A study's MLflow parent run as its runs' admission reads and sets it: the id kept
    in the study's hash (deleted with the study). The job store's ``study_tracking``
    part (:class:`services.jobs.JobStore`), so admission needs no Redis client of its own."""

    PARENT_FIELD = "mlflow_parent_run_id"

    def __init__(self, redis: aioredis.Redis) -> None:
        self.r = redis

    async def owner_and_name(self, study_id: str) -> tuple[str, str]:
        """The study's owner and name ("" for a study that does not exist)."""
        owner, name = await self.r.hmget(keys.study_key(study_id), ["owner", "name"])
        return text(owner or ""), text(name or "")

    async def parent_run(self, study_id: str) -> str:
        """The parent run's id, "" while none is set."""
        return text(await self.r.hget(keys.study_key(study_id), self.PARENT_FIELD) or "")

    async def set_parent_run(self, study_id: str, run_id: str) -> bool:
        """Keep ``run_id`` unless another submission set one first (then False)."""
        return bool(await self.r.hsetnx(keys.study_key(study_id), self.PARENT_FIELD, run_id))
