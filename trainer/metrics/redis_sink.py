"""The trainer's writer into a job's Redis Stream (the metrics bus, writer half).

Writer (:class:`RedisStreamSink`, runs in the trainer's rank-0 process): ``emit`` only
appends to a bounded in-memory buffer; a background thread XADDs batches (MAXLEN ~)
in one pipeline and mirrors per-pass results into the job's progress hash, so the NE
table survives stream trimming. While Redis is unreachable the thread backs off and
retries; training never blocks on Redis and never sees an exception. ``close`` waits
a bounded time for the buffer to drain.

Writes are idempotent: a Lua script adds an event only if its key (type, step, pass,
phase) is new (a set per job; ``train_window`` events: only if their step is past the
last one written), so a batch retried after a broken connection, or replayed from the
run directory's ``events.jsonl`` (:func:`replay_events_file`, by the runner when the
trainer ends and by the reaper when it reconciles a finished job), appears once.

The readers are in :mod:`services.metrics_bus` (control plane), which re-exports these.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import Any

import redis

from trainer.metrics import stream_keys as keys
from trainer.results import RunResult

BUFFER_MAX_EVENTS = 50_000  # about 25 MB at worst; oldest train_window events go first
BATCH_MAX_EVENTS = 500
CLOSE_TIMEOUT_S = 10.0
_RETRY_MIN_S, _RETRY_MAX_S = 0.05, 2.0


def stream_fields(event: dict[str, Any]) -> dict[str, str]:
    """How one event is stored in a stream entry (readers decode ``data``)."""
    return {"type": str(event.get("type", "")), "data": json.dumps(event, separators=(",", ":"))}


def decode_entry(fields: dict[str, str]) -> dict[str, Any]:
    try:
        return json.loads(fields["data"])
    except (KeyError, ValueError):
        return {"type": fields.get("type", "unknown")}


def event_key(event: dict[str, Any]) -> str:
    """The de-duplication key of an event: (type, step, pass, phase)."""
    return f"{event.get('type', '')}|{event.get('step', '')}|{event.get('pass', '')}|{event.get('phase', '')}"


# KEYS: stream, progress hash, seen set. ARGV: maxlen, type, key, data, step, then
# field/value pairs of the progress update. Returns 1 if added, 0 if already there.
_ADD_ONCE_LUA = """
local t = ARGV[2]
if t == 'train_window' then
  local last = tonumber(redis.call('HGET', KEYS[2], 'last_step') or '-1')
  if tonumber(ARGV[5]) <= last then return 0 end
else
  if redis.call('SADD', KEYS[3], ARGV[3]) == 0 then return 0 end
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', t, 'data', ARGV[4])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""


def add_events_once(client: redis.Redis, job_id: str, events: list[dict[str, Any]], maxlen: int) -> int:
    """Append ``events`` to the job's stream in one pipeline, skipping any already there;
    returns how many were added."""
    script = client.register_script(_ADD_ONCE_LUA)
    ks = [keys.events_stream_key(job_id), keys.progress_key(job_id), keys.event_keys_key(job_id)]
    pipe = client.pipeline(transaction=False)
    for ev in events:
        f = stream_fields(ev)
        upd = [x for kv in progress_updates(ev).items() for x in kv]
        script(
            keys=ks,
            args=[maxlen, f["type"], event_key(ev), f["data"], int(ev.get("step", 0)), *upd],
            client=pipe,
        )
    return sum(int(x) for x in pipe.execute())


def replay_events_file(
    client: redis.Redis, job_id: str, path, maxlen: int = keys.METRICS_STREAM_MAXLEN
) -> int:
    """Write the events of a run directory's ``events.jsonl`` that the stream lacks (in
    file order; an unreadable last line is skipped). Returns how many were added."""
    events: list[dict[str, Any]] = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
    except OSError:
        return 0
    added = 0
    for i in range(0, len(events), BATCH_MAX_EVENTS):
        added += add_events_once(client, job_id, events[i : i + BATCH_MAX_EVENTS], maxlen)
    return added


def progress_updates(event: dict[str, Any]) -> dict[str, str]:
    """What an event changes in the job's progress hash (may be nothing)."""
    t = event.get("type")
    if t == "pass":
        return {keys.progress_pass_field(event.get("pass", 0)): json.dumps(event, separators=(",", ":"))}
    if t == "train_window":
        out = {"last_step": str(event.get("step", 0))}
        if event.get("examples_per_s") is not None:
            out["last_examples_per_s"] = str(float(event["examples_per_s"]))
        return out
    if t == "lifecycle":
        return {"last_phase": str(event.get("phase", ""))}
    return {}


def progress_from_results(results: RunResult) -> dict[str, str]:
    """The progress-hash fields for a finished run's ``results.json``."""
    out: dict[str, str] = {}
    for p in results.passes:
        row = {"type": "pass", **p.model_dump(mode="json")}
        out[keys.progress_pass_field(p.pass_)] = json.dumps(row, separators=(",", ":"))
    if results.wall_split:  # where the run's time went (trainer.report.wall_split)
        out["wall_split"] = json.dumps(results.wall_split, separators=(",", ":"))
    return out  # the summary (selected pass, oracle NE) is derived from the passes


class RedisStreamSink:
    """Writes a job's events to its Redis Stream; buffers and retries through outages.

    Args:
        redis_url (str): Redis the control plane uses (``redis://`` or ``unix://``).
        job_id (str): the control-plane job id.
        maxlen (int): approximate stream bound (XADD MAXLEN ~).
        buffer_max (int): events held while Redis is unreachable; beyond it the oldest
            ``train_window`` events are dropped first (counted in ``dropped``).
        close_timeout_s (float): how long ``close`` waits for the buffer to drain.
    """

    def __init__(
        self,
        redis_url: str,
        job_id: str,
        *,
        maxlen: int = keys.METRICS_STREAM_MAXLEN,
        buffer_max: int = BUFFER_MAX_EVENTS,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ) -> None:
        self.job_id = job_id
        # records carry job_id (services.logs formats it; bare, logging's last resort
        # handler prints WARNING lines to stderr)
        self._log = logging.LoggerAdapter(logging.getLogger("rectrain.metrics_bus"), {"job_id": job_id})
        self.maxlen = maxlen
        self.buffer_max = buffer_max
        self.close_timeout_s = close_timeout_s
        self.dropped = 0
        self.written = 0
        self._stream = keys.events_stream_key(job_id)
        self._progress = keys.progress_key(job_id)
        self._client = redis.Redis.from_url(
            redis_url, socket_timeout=2.0, socket_connect_timeout=2.0, retry_on_timeout=False
        )
        self._buf: deque[tuple[int, dict[str, Any]]] = deque()
        self._seq = 0
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = float("inf")
        self._warned = False
        self._thread = threading.Thread(target=self._run, name=f"rectrain-sink-{job_id}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- trainer side

    def emit(self, event: dict[str, Any]) -> None:
        with self._cond:
            if self._closing:
                return
            if len(self._buf) >= self.buffer_max:
                self._drop_one()
            self._seq += 1
            self._buf.append((self._seq, event))
            self._cond.notify()

    def flush(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Wait until everything emitted so far is written; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._buf and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            return not self._buf

    def close(self) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._deadline = time.monotonic() + self.close_timeout_s
            self._cond.notify_all()
        self._thread.join(self.close_timeout_s + 1.0)
        left = len(self._buf)
        if left or self.dropped:
            self._log.warning(
                "metrics stream of job %s: %d events not written (Redis unreachable), %d dropped",
                self.job_id,
                left,
                self.dropped,
            )
        self._client.close()

    # ---------------------------------------------------------------- writer thread

    def _drop_one(self) -> None:
        for i, (_, ev) in enumerate(self._buf):
            if ev.get("type") == "train_window":
                del self._buf[i]
                break
        else:
            self._buf.popleft()
        self.dropped += 1

    def _run(self) -> None:
        backoff = _RETRY_MIN_S
        while True:
            with self._cond:
                while not self._buf and not self._closing:
                    self._cond.wait(1.0)
                if not self._buf:
                    return  # closing and drained
                batch = [self._buf[i] for i in range(min(len(self._buf), BATCH_MAX_EVENTS))]
            try:
                self._write([ev for _, ev in batch])
            except (redis.RedisError, OSError) as e:
                if not self._warned:
                    self._log.warning(
                        "metrics stream of job %s: Redis unreachable (%s); buffering and retrying",
                        self.job_id,
                        e,
                    )
                    self._warned = True
                with self._cond:
                    if self._closing and time.monotonic() >= self._deadline:
                        return
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, _RETRY_MAX_S)
                continue
            if self._warned:
                self._log.warning("metrics stream of job %s: Redis reachable again", self.job_id)
                self._warned = False
            backoff = _RETRY_MIN_S
            last = batch[-1][0]
            with self._cond:
                # events dropped while the batch was in flight are already gone: pop by sequence
                while self._buf and self._buf[0][0] <= last:
                    self._buf.popleft()
                self.written += len(batch)
                self._cond.notify_all()

    def _write(self, events: list[dict[str, Any]]) -> None:
        add_events_once(self._client, self.job_id, events, self.maxlen)
