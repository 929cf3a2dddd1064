"""Studies in the control plane: a study record in Redis and its runs as ordinary jobs.

A study (``trainer.study_spec``) expands into runs (arm x seed). Each run becomes an
ordinary job through :func:`services.submit.submit_job` (the one submission path, so
the job queue schedules it like any other), labelled ``study=<id>``,
``study_run=<run key>``, ``study_arm=<arm key>``. The study itself holds no process:
its status and answer are derived from its jobs every time they are read, so an API
restart loses nothing. What must survive a crash mid-submission is handled by
:meth:`StudyStore.reconcile`, which every API process runs periodically:

- a run is *claimed* (HSETNX of its field in the study's runs hash) before its job is
  submitted, then the field is set to the job id; a claim still without a job id after
  ``keys.STUDY_CLAIM_STALE_S`` (the API died in between) is resolved by looking for a
  job with that run's labels, else the run is submitted again;
- a study whose runs all have finished jobs leaves the active set, with its final
  status (succeeded / failed: some runs failed / cancelled).

Per-pass numbers come from the jobs' ``pass`` events (mirrored by the metrics bus into
each job's progress hash, which survives stream trimming).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from services import keys
from services.admission import StudyLimit, check_study_runs  # noqa: F401  (StudyLimit: re-exported)
from services.jobs import IllegalTransition, JobNotFound, JobRecord, JobStatus, JobStore, new_job_id
from services.launcher import JobLauncher
from services.redis_conn import redis_fields, text_list, transaction
from services.study_stats import analyze, wall_totals
from services.submit import submit_job
from trainer.errors import RectrainError, SpecError
from trainer.study_search import Stages, next_runs
from trainer.study_spec import Expansion, Run, StudySpec, eta_seconds, expand

log = logging.getLogger("rectrain.studies")

_CLAIM = "claim:"
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
        return {k: v for k, v in self.runs.items() if not v.startswith(_CLAIM)}


@functools.lru_cache(maxsize=64)
def _expansion_of(spec_json: str) -> Expansion:
    return expand(StudySpec.model_validate(json.loads(spec_json)))


def study_labels(study_id: str, run_key: str, arm: str, extra: dict[str, str]) -> dict[str, str]:
    return {**extra, "study": study_id, "study_run": run_key, "study_arm": arm}


def _status_of(record: StudyRecord, n_runs: int, jobs: dict[str, JobRecord], more: bool = False) -> str:
    """``more``: a staged study will generate further runs (its next stage)."""
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


class StudyStore:
    """Async study store over the job store's Redis."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self.r: aioredis.Redis = jobs.r

    # ------------------------------------------------------------------ read

    async def get(self, study_id: str) -> StudyRecord | None:
        if not keys.is_study_id(study_id):
            return None
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.study_key(study_id))
            pipe.hgetall(keys.study_runs_key(study_id))
            h, runs = await pipe.execute()
        return StudyRecord.from_hash(h, runs) if h else None

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

    async def _jobs_of(self, study: StudyRecord) -> dict[str, JobRecord]:
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
        jobs = await self._jobs_of(study) if jobs is None else jobs
        ended = [k for k, j in jobs.items() if j.status.is_terminal]
        if summaries is None:
            got = await self.jobs.summaries([jobs[k].id for k in ended])
            summaries = dict(zip(ended, got, strict=True))
        finished = {k: ((summaries.get(k) or {}).get("passes") or None) for k in ended}
        st = next_runs(exp, finished)
        return st.runs, not st.done, st

    async def snapshot(self, study: StudyRecord, *, with_results: bool = True) -> dict[str, Any]:
        """Everything the API shows: plan, progress, every run's job, and the answer."""
        exp = study.expansion()
        jobs = await self._jobs_of(study)
        summaries = dict(zip(jobs, await self.jobs.summaries([j.id for j in jobs.values()]), strict=True))
        all_runs, more, st = await self.stages(study, jobs, summaries)
        counts = {"total": len(all_runs), "unsubmitted": 0, **{s.value: 0 for s in JobStatus}}
        runs = []
        passes_done = 0
        for run in all_runs:
            job = jobs.get(run.key)
            summ = summaries.get(run.key) or {"passes": []}
            if job is None:
                counts["unsubmitted"] += 1
            else:
                counts[job.status.value] += 1
            passes_done += len(summ["passes"])
            runs.append(
                {
                    **run.to_dict(),
                    "job_id": job.id if job else None,
                    "status": job.status.value if job else "unsubmitted",
                    "error": job.error if job else None,
                    "passes_done": len(summ["passes"]),
                    "test_ne": [p.get("test_ne") for p in summ["passes"]],
                    "val_ne": [p.get("val_ne") for p in summ["passes"]],
                }
            )
            if st is not None:
                runs[-1]["label"] = exp.arm_of(run).label
        status = study.final_status or _status_of(study, len(all_runs), jobs, more)
        counts["finished"] = sum(counts[s.value] for s in JobStatus if s.is_terminal)
        starts = [j.started_at for j in jobs.values() if j.started_at]
        eta = None
        planned = exp.max_runs() if st is not None and more else len(all_runs)
        if status in ("queued", "running") and starts:
            eta = eta_seconds(time.time() - min(starts), counts["finished"], planned - counts["finished"])
        out: dict[str, Any] = {
            "id": study.id,
            "name": study.name,
            "owner": study.owner,
            "status": status,
            "cancel_requested": study.cancel_requested,
            "error": study.error,
            "waiting": study.waiting,
            "created_at": study.created_at,
            "finished_at": study.finished_at,
            "spec": study.spec,
            "plan": exp.plan(),
            "progress": {
                **counts,
                "passes_done": passes_done,
                "passes_total": sum(r.passes or exp.passes for r in all_runs),
            },
            "eta_seconds": eta,
            "runs": runs,
        }
        # where the time went: the finished runs' wall splits summed (services.study_stats)
        walls = {k: w for k in jobs if (w := (summaries.get(k) or {}).get("wall_split"))}
        until = study.finished_at or time.time()
        out["wall_totals"] = wall_totals(walls, until - study.created_at)
        if st is not None:
            out["progress"]["planned_max"] = planned
            out["stages"] = st.summary()
        if with_results:
            run_passes = {k: (summaries.get(k) or {}).get("passes", []) for k in jobs}
            arms, used = (exp.arms, exp.runs) if st is None else (st.arms, st.analysis_runs())
            out["results"] = analyze(
                [a.to_dict() for a in arms],
                [r.to_dict() for r in used],
                {r.key: run_passes.get(r.key, []) for r in used},
                exp.passes,
                run_summaries={r.key: summaries.get(r.key) or {} for r in used if r.key in jobs},
                search=st.search if st is not None else None,
                tuned_baseline=st.tuned if st is not None else None,
            )
        return out

    async def active_runs_of_owner(self, owner: str) -> int:
        """Runs of the owner's active studies that are not finished (or not submitted)."""
        n = 0
        for sid in text_list(await self.r.zrange(keys.active_studies_key(), 0, -1)):
            s = await self.get(sid)
            if s is None or s.owner != owner:
                continue
            total = s.expansion().max_runs()
            jobs = await self._jobs_of(s)
            n += total - sum(1 for j in jobs.values() if j.status.is_terminal)
        return n

    # ------------------------------------------------------------------ create / submit

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

    async def submit_runs(
        self, study: StudyRecord, launcher: JobLauncher, runs: RunList | None = None
    ) -> int:
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
            claimed = await self.r.hsetnx(runs_key, run.key, f"{_CLAIM}{time.time()}")
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

    async def fail(self, study: StudyRecord, error: str) -> None:
        """Stop a study that cannot run (no more submissions; unfinished jobs cancelled)."""
        await self.r.hset(keys.study_key(study.id), "error", error)
        await self.cancel(study)

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

    async def _read_stages(self, study: StudyRecord) -> tuple[dict[str, JobRecord], RunList, bool]:
        """The study's jobs, its runs now and whether more will come (:meth:`stages`)."""
        jobs = await self._jobs_of(study)
        all_runs, more, _ = await self.stages(study, jobs)
        return jobs, all_runs, more

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
            runs_key = keys.study_runs_key(sid)
            for run_key, val in s.runs.items():
                if not val.startswith(_CLAIM) or now - float(val[len(_CLAIM) :]) < keys.STUDY_CLAIM_STALE_S:
                    continue
                jid = await self._find_job_by_label(s, run_key)

                if await self._resolve_claim(runs_key, run_key, val, jid):
                    done[f"{sid}/{run_key}"] = "recovered" if jid else "resubmit"
            s = await self.get(sid)
            if s is None:
                continue
            # a staged study's stages come from its ended jobs' results: read them once for
            # the sweep (submission and settling); a fixed study's jobs only when settling
            staged = await self._read_stages(s) if s.expansion().staged else None
            if not s.cancel_requested:
                try:
                    n = await self.submit_runs(s, launcher, runs=staged[1] if staged else None)
                except SpecError as e:  # runs that can never be submitted: fail, never wait
                    await self.fail(s, e.message)
                    done[sid] = "cannot run"
                    continue
                if n:
                    done[sid] = f"submitted {n}"
                    continue
            jobs, all_runs, more = staged or await self._read_stages(s)
            if s.cancel_requested:  # a job submitted while the cancel ran: cancel it too
                for j in jobs.values():
                    if not j.status.is_terminal and not j.cancel_requested:
                        try:
                            await self.jobs.request_cancel(j.id)
                        except (IllegalTransition, JobNotFound):
                            pass
            status = _status_of(s, len(all_runs), jobs, more)
            if status in ("succeeded", "failed", "cancelled"):
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
        jobs = await self._jobs_of(study)
        all_runs, more, _ = await self.stages(study, jobs)
        done = study.final_status or _status_of(study, len(all_runs), jobs, more)
        if done in ("succeeded", "failed", "cancelled"):
            raise StudyConflict(f"Study already {done}")
        await self.r.hset(keys.study_key(study.id), "cancel_requested", "1")
        n = 0
        for jid in study.job_ids().values():
            try:
                await self.jobs.request_cancel(jid)
                n += 1
            except (IllegalTransition, JobNotFound):
                continue
        # a run claimed by a submission in flight: its job appears shortly; cancel it then
        fresh = await self.get(study.id)
        if fresh is not None:
            for k, jid in fresh.job_ids().items():
                if k not in study.job_ids():
                    try:
                        await self.jobs.request_cancel(jid)
                        n += 1
                    except (IllegalTransition, JobNotFound):
                        continue
        return n

    async def delete(self, study: StudyRecord, *, force: bool = False) -> None:
        """Delete a finished study and all its jobs (409 while any job is unfinished;
        ``force``: a study with no jobs at all, refused before it started)."""
        jobs = await self._jobs_of(study)
        active = [j.id for j in jobs.values() if not j.status.is_terminal]
        all_runs, more, _ = await self.stages(study, jobs)
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

    async def change_signature(self, study: StudyRecord) -> tuple:
        """Cheap fingerprint of everything a study page shows (statuses, pass counts)."""
        fresh = await self.get(study.id) or study
        ids = fresh.job_ids()
        async with self.r.pipeline(transaction=False) as pipe:
            for jid in ids.values():
                pipe.hget(keys.job_key(jid), "status")
                pipe.hlen(keys.progress_key(jid))
            vals = await pipe.execute()
        return (
            fresh.cancel_requested,
            fresh.final_status,
            tuple(sorted(fresh.runs.items())),
            tuple(vals),
        )


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
