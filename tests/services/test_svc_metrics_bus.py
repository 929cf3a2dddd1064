"""The metrics bus writer (RedisStreamSink) and readers, against real redis-servers."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
import redis
from svc_helpers import open_store, run

from services import keys
from services.job_events import summarize_progress
from services.metrics_bus import RedisStreamSink, read_events, wait_events
from tests.net import free_port, wait_port

JOB = "0123456789abcdef"


def _ev(step: int, type_: str = "train_window", pass_: int = 0, **kw) -> dict:
    return {"type": type_, "step": step, "pass": pass_, "ts": time.time(), **kw}


def _stream(r, job=JOB):
    return [json.loads(f["data"]) for _, f in r.xrange(keys.events_stream_key(job))]


def test_sink_writes_events_in_order_and_mirrors_passes(redis_url, redis_client):
    sink = RedisStreamSink(redis_url, JOB)
    for i in range(1, 201):
        sink.emit(_ev(i, ne_window=0.9, examples_per_s=1000.0 + i))
    sink.emit(_ev(200, "pass", 0, train_ne=0.9, test_ne=0.95))
    sink.close()
    got = _stream(redis_client)
    assert [e["step"] for e in got] == list(range(1, 201)) + [200]
    s = summarize_progress(redis_client.hgetall(keys.progress_key(JOB)))
    assert s["passes"][0]["test_ne"] == 0.95 and s["last_examples_per_s"] == 1200.0


def test_sink_stream_is_bounded(redis_url, redis_client):
    sink = RedisStreamSink(redis_url, JOB, maxlen=1000)
    for i in range(5000):
        sink.emit(_ev(i))
    sink.close()
    n = redis_client.xlen(keys.events_stream_key(JOB))
    assert 1000 <= n < 5000  # MAXLEN ~ trims by whole macro nodes


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own, that the test can stop and restart on the same port."""
    exe = shutil.which("redis-server")
    port = free_port()

    def start():
        p = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(port, 10)
        return p

    procs = [start()]
    yield {"url": f"redis://127.0.0.1:{port}/0", "start": lambda: procs.append(start()), "procs": procs}
    for p in procs:
        p.terminate()
        p.wait(10)


def test_sink_buffers_through_an_outage_and_never_blocks(own_redis):
    url = own_redis["url"]
    sink = RedisStreamSink(url, JOB)
    sink.emit(_ev(1))
    assert sink.flush(5)
    own_redis["procs"][-1].kill()  # Redis goes away (data lost: --save "")
    own_redis["procs"][-1].wait()
    t0 = time.monotonic()
    for i in range(2, 1002):
        sink.emit(_ev(i))
    assert time.monotonic() - t0 < 0.5  # emit never waits for Redis
    time.sleep(1.0)
    own_redis["start"]()
    assert sink.flush(15), "buffer did not drain after Redis came back"
    sink.close()
    r = redis.Redis.from_url(url, decode_responses=True)
    steps = [e["step"] for e in _stream(r)]
    assert steps[-1000:] == list(range(2, 1002))  # nothing after the outage lost, order kept
    r.close()


def test_sink_close_is_bounded_when_redis_stays_down(own_redis):
    sink = RedisStreamSink(own_redis["url"], JOB, close_timeout_s=1.0)
    own_redis["procs"][-1].kill()
    own_redis["procs"][-1].wait()
    for i in range(10):
        sink.emit(_ev(i))
    t0 = time.monotonic()
    sink.close()  # must not raise
    assert time.monotonic() - t0 < 5.0


def test_sink_buffer_is_bounded_and_drops_train_window_first(own_redis):
    sink = RedisStreamSink(own_redis["url"], JOB, buffer_max=10, close_timeout_s=0.5)
    own_redis["procs"][-1].kill()
    own_redis["procs"][-1].wait()
    sink.emit(_ev(0, "pass", 0, test_ne=0.9))
    for i in range(1, 50):
        sink.emit(_ev(i))
    assert len(sink._buf) == 10 and sink.dropped == 40
    assert sink._buf[0][1]["type"] == "pass"  # the pass result survived
    sink.close()


def test_readers_page_by_cursor_and_wait(redis_url, redis_client):
    sink = RedisStreamSink(redis_url, JOB)
    for i in range(10):
        sink.emit(_ev(i))
    sink.close()

    async def go():
        async with open_store(redis_url) as store:
            first = await read_events(store.r, JOB, None, 4)
            assert [e["step"] for _, e in first] == [0, 1, 2, 3]
            rest = await read_events(store.r, JOB, first[-1][0], 100)
            assert [e["step"] for _, e in rest] == list(range(4, 10))
            assert await read_events(store.r, JOB, rest[-1][0], 100) == []
            t0 = time.monotonic()
            assert await wait_events(store.r, JOB, rest[-1][0], block_ms=200) == []
            assert time.monotonic() - t0 >= 0.15

    run(go())
