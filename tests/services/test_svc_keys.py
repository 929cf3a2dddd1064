"""Key builders: one per key, all under the prefix, distinct, units in TTL names."""

from services import keys
from services.jobs import new_job_id


def test_builders_are_prefixed_and_distinct():
    jid = new_job_id()
    built = [
        keys.job_key(jid),
        keys.events_stream_key(jid),
        keys.progress_key(jid),
        keys.heartbeat_key(jid),
        keys.jobs_index_key(),
        keys.status_index_key("running"),
        keys.owner_jobs_key("alice"),
        keys.owner_status_key("alice", "running"),
        keys.study_key(jid),
        keys.study_runs_key(jid),
        keys.studies_index_key(),
        keys.active_studies_key(),
        keys.owner_studies_key("alice"),
        keys.queue_owner_key("alice"),
        keys.queue_owners_key(),
        keys.queue_turn_key(),
        keys.queue_seq_key(),
        keys.queue_info_key(),
        keys.dispatch_leader_key(),
    ]
    assert all(k.startswith(keys.KEY_PREFIX + ":") for k in built)
    assert len(set(built)) == len(built)
    assert keys.job_key(jid) == f"rectrain:job:{jid}"
    assert keys.events_stream_key(jid) == f"rectrain:job:{jid}:events"
    assert keys.owner_status_key("bob", "queued") == "rectrain:owner:bob:status:queued"
    assert keys.progress_pass_field(3) == "pass:3"
    assert keys.study_runs_key(jid) == f"rectrain:study:{jid}:runs"
    assert keys.owner_studies_key("bob") == "rectrain:owner:bob:studies"
    assert keys.queue_owner_key("bob") == "rectrain:queue:owner:bob"


def test_queue_scores_put_priority_first_then_arrival():
    scores = [keys.queue_score(p, seq) for p, seq in [(5, 3), (0, 1), (0, 2), (-1, 0)]]
    assert scores == sorted(scores)
    top = keys.queue_score(keys.PRIORITY_MAX, 2**40 - 1)
    assert top == -keys.PRIORITY_MAX * keys.QUEUE_PRIORITY_STRIDE + 2**40 - 1  # exact in a double


def test_job_ids_are_checked_before_they_reach_a_key():
    assert keys.is_job_id(new_job_id())
    for bad in ("", "x", "0123456789abcdeF", "../../etc", "0123456789abcdef0", "*"):
        assert not keys.is_job_id(bad)


def test_bounds_and_ttls_are_sane():
    assert keys.METRICS_STREAM_MAXLEN >= 10_000
    assert keys.HEARTBEAT_TTL_S > 2 * keys.HEARTBEAT_INTERVAL_S
    assert keys.QUEUED_RELAUNCH_AFTER_S > keys.HEARTBEAT_TTL_S
    assert keys.STUDY_CLAIM_STALE_S > 5 * keys.STUDY_RECONCILE_INTERVAL_S
