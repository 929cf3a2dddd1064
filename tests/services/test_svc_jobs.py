"""The job store and its status machine, against the session's real redis-server."""

from __future__ import annotations

import asyncio
import json

import pytest
from svc_helpers import open_store, run

from services import keys
from services.job_events import summarize_progress
from services.job_record import TRANSITIONS
from services.jobs import IllegalTransition, JobNotFound, JobStatus

SPEC = {"training": {"num_passes": 2}}
S = JobStatus


def test_status_machine_shape():
    assert {s for s in S if s.is_terminal} == {S.SUCCEEDED, S.FAILED, S.CANCELLED}
    assert {s for s in S if s.is_active} == {S.STARTING, S.RUNNING}
    for s in S:
        assert not s.can_become(s)
        assert s.can_become(S.CANCELLED) == (not s.is_terminal)
        if s.is_terminal:
            assert TRANSITIONS[s] == frozenset()
    assert S.QUEUED.can_become(S.STARTING) and not S.QUEUED.can_become(S.RUNNING)
    assert not S.QUEUED.can_become(S.SUCCEEDED)
    assert S.RUNNING.can_become(S.SUCCEEDED) and not S.STARTING.can_become(S.SUCCEEDED)


def test_create_get_and_the_happy_path(redis_url, redis_client):
    async def go():
        async with open_store(redis_url) as store:
            job = await store.create(owner="alice", spec=SPEC, num_passes=2, name="n", labels={"a": "b"})
            got = await store.get(job.id)
            assert (
                got.status == S.QUEUED and got.spec == SPEC and got.labels == {"a": "b"} and got.name == "n"
            )
            assert got.started_at is None
            assert await store.transition(job.id, S.STARTING) == S.QUEUED
            assert await store.transition(job.id, S.RUNNING, trainer_pid=123) == S.STARTING
            await store.transition(job.id, S.SUCCEEDED)
            got = await store.get(job.id)
            assert got.status == S.SUCCEEDED and got.trainer_pid == 123
            assert got.created_at <= got.started_at <= got.finished_at
            return job.id

    jid = run(go())
    # indexes moved with the status, and every change is a status event in the stream
    assert redis_client.zrange(keys.status_index_key("succeeded"), 0, -1) == [jid]
    assert redis_client.zcard(keys.status_index_key("queued")) == 0
    assert redis_client.zrange(keys.owner_status_key("alice", "succeeded"), 0, -1) == [jid]
    events = [json.loads(f["data"]) for _, f in redis_client.xrange(keys.events_stream_key(jid))]
    assert [e["status"] for e in events] == ["queued", "starting", "running", "succeeded"]
    assert all(e["type"] == "status" for e in events)


def test_illegal_transitions_are_refused(redis_url, redis_client):
    async def go():
        async with open_store(redis_url) as store:
            job = await store.create(owner="alice", spec=SPEC, num_passes=2)
            with pytest.raises(IllegalTransition):
                await store.transition(job.id, S.SUCCEEDED)  # queued -> succeeded
            with pytest.raises(IllegalTransition):
                await store.transition(job.id, S.STARTING, expect={S.RUNNING})
            await store.transition(job.id, S.FAILED, error="boom")
            for to in S:
                with pytest.raises(IllegalTransition):
                    await store.transition(job.id, to)
            assert (await store.get(job.id)).error == "boom"
            with pytest.raises(JobNotFound):
                await store.transition("0123456789abcdef", S.STARTING)

    run(go())


def test_concurrent_transitions_only_one_wins(redis_url, redis_client):
    async def go():
        async with open_store(redis_url) as store:
            job = await store.create(owner="alice", spec=SPEC, num_passes=2)
            await store.transition(job.id, S.STARTING)
            await store.transition(job.id, S.RUNNING)
            results = await asyncio.gather(
                *[store.transition(job.id, to) for to in (S.SUCCEEDED, S.FAILED, S.CANCELLED) * 4],
                return_exceptions=True,
            )
            wins = [r for r in results if not isinstance(r, Exception)]
            assert len(wins) == 1 and all(isinstance(r, IllegalTransition) for r in results if r not in wins)
            return job.id

    run(go())
    terminal = sum(redis_client.zcard(keys.status_index_key(s.value)) for s in S if s.is_terminal)
    assert terminal == 1


def test_cancel_queued_at_once_active_by_flag_finished_refused(redis_url, redis_client):
    async def go():
        async with open_store(redis_url) as store:
            q = await store.create(owner="alice", spec=SPEC, num_passes=2)
            assert await store.request_cancel(q.id) == S.CANCELLED
            r = await store.create(owner="alice", spec=SPEC, num_passes=2)
            await store.transition(r.id, S.STARTING)
            assert await store.request_cancel(r.id) == S.STARTING
            assert (await store.get(r.id)).cancel_requested
            with pytest.raises(IllegalTransition):
                await store.request_cancel(q.id)

    run(go())


def test_list_pages_by_owner_and_status(redis_url, redis_client):
    async def go():
        async with open_store(redis_url) as store:
            ids = [(await store.create(owner="alice", spec=SPEC, num_passes=2)).id for _ in range(5)]
            await store.create(owner="bob", spec=SPEC, num_passes=2)
            await store.request_cancel(ids[0])
            page, count = await store.list("alice", limit=2, offset=0)
            assert count == 5 and [j.id for j in page] == ids[::-1][:2]  # newest first
            page, count = await store.list("alice", limit=10, offset=4)
            assert [j.id for j in page] == [ids[0]]
            page, count = await store.list("alice", S.CANCELLED)
            assert count == 1 and page[0].id == ids[0]
            page, count = await store.list("alice", S.QUEUED, limit=3)
            assert count == 4 and len(page) == 3
            assert (await store.queues.count_by_status())[S.QUEUED] == 5
            with pytest.raises(JobNotFound):
                await store.get_for_owner(ids[1], "bob")

    run(go())


def test_delete_only_finished_and_removes_everything(redis_url, redis_client):
    async def go():
        async with open_store(redis_url) as store:
            job = await store.create(owner="alice", spec=SPEC, num_passes=2)
            with pytest.raises(IllegalTransition):
                await store.delete(job.id)
            await store.request_cancel(job.id)
            await store.r.hset(keys.progress_key(job.id), "pass:0", "{}")
            await store.delete(job.id)
            assert await store.get(job.id) is None
            with pytest.raises(JobNotFound):
                await store.delete(job.id)

    run(go())
    # the queue's own bookkeeping (owners' turns, arrival counters) is not per job
    left = [k for k in redis_client.keys("*") if not k.startswith("rectrain:queue:")]
    assert left == [] or all(redis_client.zcard(k) == 0 for k in left)
    assert redis_client.zcard(keys.queue_owner_key("alice")) == 0


def test_reap_only_without_heartbeat(redis_url, redis_client):
    async def go():
        async with open_store(redis_url) as store:
            job = await store.create(owner="alice", spec=SPEC, num_passes=2)
            await store.transition(job.id, S.STARTING)
            await store.r.set(keys.heartbeat_key(job.id), "x", px=5000)
            assert await store.reap_if_heartbeat_lost(job.id, "gone") is None
            await store.r.delete(keys.heartbeat_key(job.id))
            assert await store.reap_if_heartbeat_lost(job.id, "gone") == S.FAILED
            got = await store.get(job.id)
            assert got.status == S.FAILED and got.error == "gone"
            assert await store.reap_if_heartbeat_lost(job.id, "again") is None  # already terminal

    run(go())


def test_summary_from_progress():
    prog = {
        "pass:1": json.dumps({"pass": 1, "val_ne": 0.88, "test_ne": 0.91, "oracle_test_ne": 0.8}),
        "pass:0": json.dumps({"pass": 0, "val_ne": 0.89, "test_ne": 0.90, "oracle_test_ne": 0.8}),
        "pass:2": json.dumps({"pass": 2, "val_ne": None, "test_ne": 0.95}),
        "last_examples_per_s": "1234.5",
    }
    s = summarize_progress(prog)
    assert [p["pass"] for p in s["passes"]] == [0, 1, 2]
    # the lowest validation NE selects pass 1, though pass 0 has the lower test NE
    assert s["selection"] == "validation" and s["selected_pass"] == 1
    assert s["val_ne_at_selected"] == 0.88 and s["test_ne_at_selected"] == 0.91
    assert s["last_pass"] == 2 and s["test_ne_at_last"] == 0.95 and s["oracle_test_ne"] == 0.8
    assert s["last_examples_per_s"] == 1234.5
    # no validation data: nothing is selected, the last pass is the one shown
    s = summarize_progress(
        {
            "pass:0": json.dumps({"pass": 0, "test_ne": 0.9}),
            "pass:1": json.dumps({"pass": 1, "test_ne": 0.92}),
        }
    )
    assert s["selection"] == "none" and s["selected_pass"] is None and s["test_ne_at_selected"] is None
    assert s["last_pass"] == 1 and s["test_ne_at_last"] == 0.92
    assert summarize_progress({}) == {
        "passes": [],
        "selection": "none",
        "selected_pass": None,
        "val_ne_at_selected": None,
        "test_ne_at_selected": None,
        "last_pass": None,
        "test_ne_at_last": None,
        "oracle_val_ne": None,
        "oracle_test_ne": None,
        "last_examples_per_s": None,
        "references": None,
        "pass1_worse_than_constant": None,
    }
