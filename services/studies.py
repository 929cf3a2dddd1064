"""Studies in the control plane: a study record in Redis and its runs as ordinary jobs.

A study (``trainer.study_spec``) expands into runs (arm x seed). Each run becomes an
ordinary job through :func:`services.submit.submit_job` (the one submission path, so
the job queue schedules it like any other), labelled ``study=<id>``,
``study_run=<run key>``, ``study_arm=<arm key>``. The study itself holds no process:
its status and answer are derived from its jobs every time they are read, so an API
restart loses nothing. What must survive a crash mid-submission is handled by
:meth:`StudyStore.reconcile`, which every API process runs periodically:

- a run is *claimed* in the study's runs hash before its job is submitted; a claim left
  without a job by an API that died is resolved (:mod:`services.study_runs`);
- a study whose runs all have finished jobs leaves the active set, with its final
  status (succeeded / failed: some runs failed / cancelled).

Per-pass numbers come from the jobs' ``pass`` events (mirrored by the metrics bus into
each job's progress hash, which survives stream trimming).

:class:`StudyStore` holds the study's life (create, reconcile, cancel, delete); its
parts, over the job store's Redis:

- ``studies.runs`` (:mod:`services.study_runs`): the runs it has now, their jobs,
  submitting them and resolving their claims;
- ``studies.view`` (:mod:`services.study_view`): what the API shows of it.

The record, its errors and its derived status live in :mod:`services.study_record`.
"""

from __future__ import annotations

import json
import logging
import time

import redis.asyncio as aioredis

from services import keys
from services.admission import StudyLimit, check_study_runs  # noqa: F401  (StudyLimit: re-exported)
from services.jobs import IllegalTransition, JobNotFound, JobStore, new_job_id
from services.launcher import JobLauncher
from services.redis_conn import redis_fields, text_list
from services.study_record import (  # also imported from here by the routes
    FINISHED,
    StudyConflict,
    StudyNotFound,
    StudyRecord,
    read_study,
    study_status,
)
from services.study_runs import StudyRuns
from services.study_view import StudyView
from trainer.errors import SpecError
from trainer.study_spec import Expansion

log = logging.getLogger("rectrain.studies")


class StudyStore:
    """Async study store over the job store's Redis."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self.r: aioredis.Redis = jobs.r
        self.runs = StudyRuns(jobs)
        self.view = StudyView(self.runs)

    # ------------------------------------------------------------------ read

    async def get(self, study_id: str) -> StudyRecord | None:
        return await read_study(self.r, study_id)

    async def get_for_owner(self, study_id: str, owner: str) -> StudyRecord:
        s = await self.get(study_id)
        if s is None or s.owner != owner:
            raise StudyNotFound("Study not found")
        return s

    async def list(self, owner: str, limit: int = 50, offset: int = 0) -> tuple[list[StudyRecord], int]:
        idx = keys.owner_studies_key(owner)
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.zcard(idx)
            pipe.zrevrange(idx, offset, offset + limit - 1)
            count, ids = await pipe.execute()
        out = []
        for i in ids:
            s = await self.get(i)
            if s is not None:
                out.append(s)
        return out, count

    async def active_runs_of_owner(self, owner: str) -> int:
        """Runs of the owner's active studies that are not finished (or not submitted)."""
        n = 0
        for sid in text_list(await self.r.zrange(keys.active_studies_key(), 0, -1)):
            s = await self.get(sid)
            if s is None or s.owner != owner:
                continue
            total = s.expansion().max_runs()
            jobs = await self.runs.jobs_of(s)
            n += total - sum(1 for j in jobs.values() if j.status.is_terminal)
        return n

    # ------------------------------------------------------------------ create / reconcile

    async def create(self, owner: str, exp: Expansion, name: str | None, max_runs: int) -> StudyRecord:
        """Record a study (after the per-owner limit check, :func:`services.admission.check_study_runs`)
        and mark it active."""
        # admission of the study as a whole (its runs are admitted one by one as jobs)
        check_study_runs(exp.max_runs(), await self.active_runs_of_owner(owner), max_runs)
        now = time.time()
        rec = StudyRecord(
            id=new_job_id(),
            owner=owner,
            spec=exp.spec.model_dump(mode="json"),
            created_at=now,
            name=name or exp.spec.name,
        )
        mapping = {
            "id": rec.id,
            "owner": owner,
            "spec": json.dumps(rec.spec),
            "created_at": str(now),
            "name": rec.name or "",
            "cancel_requested": "0",
        }
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(keys.study_key(rec.id), mapping=redis_fields(mapping))
            pipe.zadd(keys.studies_index_key(), {rec.id: now})
            pipe.zadd(keys.owner_studies_key(owner), {rec.id: now})
            pipe.zadd(keys.active_studies_key(), {rec.id: now})
            await pipe.execute()
        return rec

    async def fail(self, study: StudyRecord, error: str) -> None:
        """Stop a study that cannot run (no more submissions; unfinished jobs cancelled)."""
        await self.r.hset(keys.study_key(study.id), "error", error)
        await self.cancel(study)

    async def reconcile(self, launcher: JobLauncher) -> dict[str, str]:
        """One sweep over active studies: resolve stale claims, submit missing runs,
        settle finished studies. Safe to run from several API processes."""
        done: dict[str, str] = {}
        now = time.time()
        for sid in text_list(await self.r.zrange(keys.active_studies_key(), 0, -1)):
            s = await self.get(sid)
            if s is None:
                await self.r.zrem(keys.active_studies_key(), sid)
                continue
            resolved = await self.runs.resolve_stale_claims(s, now)
            if resolved:  # its runs changed: read it again
                done.update(resolved)
                s = await self.get(sid)
                if s is None:
                    continue
            # a staged study's stages come from its ended jobs' results: read them once for
            # the sweep (submission and settling); a fixed study's jobs only when settling
            staged = await self.runs.read_stages(s) if s.expansion().staged else None
            if not s.cancel_requested:
                try:
                    n = await self.runs.submit(s, launcher, runs=staged[1] if staged else None)
                except SpecError as e:  # runs that can never be submitted: fail, never wait
                    await self.fail(s, e.message)
                    done[sid] = "cannot run"
                    continue
                if n:
                    done[sid] = f"submitted {n}"
                    continue
            jobs, all_runs, more = staged or await self.runs.read_stages(s)
            if s.cancel_requested:  # a job submitted while the cancel ran: cancel it too
                await self.runs.cancel_jobs(
                    j.id for j in jobs.values() if not j.status.is_terminal and not j.cancel_requested
                )
            status = study_status(s, len(all_runs), jobs, more)
            if status in FINISHED:
                async with self.r.pipeline(transaction=True) as pipe:
                    pipe.hset(
                        keys.study_key(sid), mapping={"finished_at": str(time.time()), "final_status": status}
                    )
                    pipe.zrem(keys.active_studies_key(), sid)
                    await pipe.execute()
                done[sid] = status
        return done

    # ------------------------------------------------------------------ cancel / delete

    async def cancel(self, study: StudyRecord) -> int:
        """Stop submitting runs and cancel every unfinished job; returns how many."""
        jobs = await self.runs.jobs_of(study)
        all_runs, more, _ = await self.runs.stages(study, jobs)
        done = study.final_status or study_status(study, len(all_runs), jobs, more)
        if done in FINISHED:
            raise StudyConflict(f"Study already {done}")
        await self.r.hset(keys.study_key(study.id), "cancel_requested", "1")
        asked = study.job_ids()
        n = await self.runs.cancel_jobs(asked.values())
        # a run claimed by a submission in flight: its job appears shortly; cancel it then
        fresh = await self.get(study.id)
        if fresh is not None:
            n += await self.runs.cancel_jobs(jid for k, jid in fresh.job_ids().items() if k not in asked)
        return n

    async def delete(self, study: StudyRecord, *, force: bool = False) -> None:
        """Delete a finished study and all its jobs (409 while any job is unfinished;
        ``force``: a study with no jobs at all, refused before it started)."""
        jobs = await self.runs.jobs_of(study)
        active = [j.id for j in jobs.values() if not j.status.is_terminal]
        all_runs, more, _ = await self.runs.stages(study, jobs)
        unsubmitted = len(all_runs) - len(jobs) + (1 if more else 0)
        if active or (not force and not study.cancel_requested and unsubmitted > 0):
            raise StudyConflict(
                f"Study has {len(active) or len(all_runs) - len(jobs) or 'more'} unfinished runs; cancel it first"
            )
        for j in jobs.values():
            try:
                await self.jobs.delete(j.id)
            except (JobNotFound, IllegalTransition):
                continue
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.delete(keys.study_key(study.id), keys.study_runs_key(study.id))
            pipe.zrem(keys.studies_index_key(), study.id)
            pipe.zrem(keys.owner_studies_key(study.owner), study.id)
            pipe.zrem(keys.active_studies_key(), study.id)
            await pipe.execute()


async def study_loop(studies: StudyStore, launcher: JobLauncher, interval_s: float) -> None:
    """Reconcile active studies forever (each API process runs one)."""
    import asyncio

    while True:
        try:
            await studies.reconcile(launcher)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # Redis away, etc.: try again next tick
            log.warning("study reconcile failed: %s: %s", type(e).__name__, e)
        await asyncio.sleep(interval_s)
