"""What the API shows of a study: its snapshot (plan, progress, every run's job, the
answer) and a cheap fingerprint that tells a live stream when to send a new one.

The answer itself is computed by :mod:`services.study_stats` from the runs' per-pass
numbers (each job's progress hash, :attr:`services.jobs.JobStore.events`). Reach it as
``StudyStore.view``.
"""

from __future__ import annotations

import time
from typing import Any

from services import keys
from services.job_record import JobStatus
from services.study_record import StudyRecord, read_study, study_status
from services.study_runs import StudyRuns
from services.study_stats import analyze, wall_totals
from trainer.study_spec import eta_seconds


class StudyView:
    """A study's snapshot and change signature, over its runs."""

    def __init__(self, runs: StudyRuns) -> None:
        self.runs = runs
        self.r = runs.r

    async def snapshot(self, study: StudyRecord, *, with_results: bool = True) -> dict[str, Any]:
        """Everything the API shows: plan, progress, every run's job, and the answer."""
        exp = study.expansion()
        jobs = await self.runs.jobs_of(study)
        summaries = dict(
            zip(jobs, await self.runs.jobs.events.summaries([j.id for j in jobs.values()]), strict=True)
        )
        all_runs, more, st = await self.runs.stages(study, jobs, summaries)
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
        status = study.final_status or study_status(study, len(all_runs), jobs, more)
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

    async def change_signature(self, study: StudyRecord) -> tuple:
        """Cheap fingerprint of everything a study page shows (statuses, pass counts)."""
        fresh = await read_study(self.r, study.id) or study
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
