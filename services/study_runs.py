"""A study's runs as jobs: which runs it has now, submitting them, and their claims.

A study (``trainer.study_spec``) expands into runs (arm x seed); a staged study (a
searched range or a tuned baseline) gets its later stages' runs from the results of its
ended ones (``trainer.study_search``, deterministic, so a restart resumes). Each run
becomes an ordinary job through :func:`services.submit.submit_job`, labelled
``study=<id>``, ``study_run=<run key>``, ``study_arm=<arm key>``.

A run is *claimed* (HSETNX of its field in the study's runs hash) before its job is
submitted, then the field is set to the job id; a claim still without a job id after
``keys.STUDY_CLAIM_STALE_S`` (the API died in between) is resolved by looking for a job
with that run's labels, else the run is submitted again. Reach it as ``StudyStore.runs``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from redis.asyncio.client import Pipeline

from services import keys
from services.jobs import IllegalTransition, JobNotFound, JobRecord, JobStore
from services.launcher import JobLauncher
from services.redis_conn import transaction
from services.study_record import CLAIM_PREFIX, RunList, StudyRecord
from services.submit import submit_job
from trainer.errors import RectrainError, SpecError
from trainer.study_search import Stages, next_runs

log = logging.getLogger("rectrain.studies")


def study_labels(study_id: str, run_key: str, arm: str, extra: dict[str, str]) -> dict[str, str]:
    return {**extra, "study": study_id, "study_run": run_key, "study_arm": arm}


class StudyRuns:
    """A study's run membership and staging, over the job store."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self.r = jobs.r

    async def jobs_of(self, study: StudyRecord) -> dict[str, JobRecord]:
        """The study's jobs by run key (runs still claimed have none)."""
        ids = study.job_ids()
        if not ids:
            return {}
        async with self.r.pipeline(transaction=False) as pipe:
            for jid in ids.values():
                pipe.hgetall(keys.job_key(jid))
            hashes = await pipe.execute()
        return {k: JobRecord.from_hash(h) for k, h in zip(ids, hashes, strict=True) if h}

    async def stages(
        self,
        study: StudyRecord,
        jobs: dict[str, JobRecord] | None = None,
        summaries: dict[str, dict[str, Any]] | None = None,
    ) -> tuple[RunList, bool, Stages | None]:
        """The runs a study has now, whether more will come, and (a staged study: a
        searched range or a tuned baseline) its stages, regenerated from the results of
        its ended jobs (trainer/study_search.py: deterministic, so a restart resumes)."""
        exp = study.expansion()
        if not exp.staged:
            return exp.runs, False, None
        jobs = await self.jobs_of(study) if jobs is None else jobs
        ended = [k for k, j in jobs.items() if j.status.is_terminal]
        if summaries is None:
            got = await self.jobs.events.summaries([jobs[k].id for k in ended])
            summaries = dict(zip(ended, got, strict=True))
        finished = {k: ((summaries.get(k) or {}).get("passes") or None) for k in ended}
        st = next_runs(exp, finished)
        return st.runs, not st.done, st

    async def read_stages(self, study: StudyRecord) -> tuple[dict[str, JobRecord], RunList, bool]:
        """The study's jobs, its runs now and whether more will come (:meth:`stages`)."""
        jobs = await self.jobs_of(study)
        all_runs, more, _ = await self.stages(study, jobs)
        return jobs, all_runs, more

    async def submit(self, study: StudyRecord, launcher: JobLauncher, runs: RunList | None = None) -> int:
        """Submit every run without a job or claim; returns how many were submitted. A
        staged study's runs are those of the stages its ended runs have reached
        (``runs``: :meth:`stages` already read by the caller)."""
        exp = study.expansion()
        runs_key = keys.study_runs_key(study.id)
        done = 0
        all_runs = runs if runs is not None else (await self.stages(study))[0]
        for run in all_runs:
            if await self.r.hget(keys.study_key(study.id), "cancel_requested") == "1":
                break
            claimed = await self.r.hsetnx(runs_key, run.key, f"{CLAIM_PREFIX}{time.time()}")
            if not claimed:
                continue
            try:
                job = await submit_job(
                    self.jobs,
                    launcher,
                    owner=study.owner,
                    spec=exp.job_spec(run),
                    name=f"{study.name or 'study ' + study.id[:8]} · {exp.arm_of(run).label} · seed {run.seed}",
                    labels=study_labels(study.id, run.key, run.arm, exp.spec.labels),
                )
            except SpecError:  # the run can never run (never fits, init_from refused...): stop the study
                await self.r.hdel(runs_key, run.key)
                raise
            except RectrainError as e:  # e.g. the owner's queue is full: a later sweep goes on
                await self.r.hdel(runs_key, run.key)
                await self.r.hset(keys.study_key(study.id), "waiting", f"submission paused: {e.message}")
                log.info("study %s: %s", study.id, e.message)
                break
            await self.r.hset(runs_key, run.key, job.id)
            done += 1
        else:
            await self.r.hdel(keys.study_key(study.id), "waiting")
        return done

    async def cancel_jobs(self, job_ids: Iterable[str]) -> int:
        """Request the cancel of each job (finished or deleted ones skipped); how many were asked."""
        n = 0
        for jid in job_ids:
            try:
                await self.jobs.request_cancel(jid)
                n += 1
            except (IllegalTransition, JobNotFound):
                continue
        return n

    # ------------------------------------------------------------------ stale claims

    async def resolve_stale_claims(self, study: StudyRecord, now: float) -> dict[str, str]:
        """Resolve the study's claims older than ``keys.STUDY_CLAIM_STALE_S``: to the job
        with the run's labels ("recovered"), else dropped for the run to be submitted
        again ("resubmit"); keyed ``<study id>/<run key>``."""
        done: dict[str, str] = {}
        runs_key = keys.study_runs_key(study.id)
        for run_key, val in study.runs.items():
            if not val.startswith(CLAIM_PREFIX):
                continue
            if now - float(val[len(CLAIM_PREFIX) :]) < keys.STUDY_CLAIM_STALE_S:
                continue
            jid = await self._find_job_by_label(study, run_key)
            if await self._resolve_claim(runs_key, run_key, val, jid):
                done[f"{study.id}/{run_key}"] = "recovered" if jid else "resubmit"
        return done

    async def _find_job_by_label(self, study: StudyRecord, run_key: str) -> str | None:
        offset = 0
        while True:
            jobs, count = await self.jobs.list(study.owner, limit=200, offset=offset)
            for j in jobs:
                if j.labels.get("study") == study.id and j.labels.get("study_run") == run_key:
                    return j.id
            offset += 200
            if offset >= count or not jobs:
                return None

    async def _resolve_claim(self, runs_key: str, run_key: str, claim: str, job_id: str | None) -> bool:
        """Replace a stale claim by the run's job id (None: drop it, the run is submitted
        again); False when another process resolved it first (the claim changed)."""

        async def check(pipe: Pipeline) -> bool:
            if await pipe.hget(runs_key, run_key) != claim:
                await pipe.unwatch()
                return False
            pipe.multi()
            if job_id:
                pipe.hset(runs_key, run_key, job_id)
            else:
                pipe.hdel(runs_key, run_key)
            return True

        return await transaction(self.r, check, runs_key)
